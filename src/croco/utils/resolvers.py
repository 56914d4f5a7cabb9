"""OmegaConf resolvers used by ``conf/``: the ``croco.*`` namespace.

They are registered when ``croco.utils`` is imported (``train.py`` and the tests do so before composing).

* ``${croco.precision:cpu|gpu|auto}``: the Lightning precision for that accelerator (``hardware.default_precision``).
* ``${croco.wandb_offline:}``: True unless a W&B API key is configured (``WANDB_API_KEY`` or a ~/.netrc entry).
* ``${croco.run_name:}``: the stable name of a run: the experiment, plus the overrides that change what is
  trained (so two different runs never resume from each other's checkpoints, and a requeued job finds its own).
* ``${croco.sweep_group:}``: in a multirun, one name shared by all of its jobs (experiment + sweep folder),
  so the W&B dashboard groups them; ``null`` in a single run.
"""

from __future__ import annotations

import hashlib
import netrc
import os
import re
from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from croco.utils.hardware import default_precision

__all__ = [
    "NON_IDENTITY_OVERRIDES",
    "register_resolvers",
    "run_name_from_overrides",
    "wandb_api_key_configured",
]

# Overrides that change how or where a run executes, not what it learns: left out of the run name so that
# e.g. `trainer.devices=8` or `logger=csv` resumes the same run.
NON_IDENTITY_OVERRIDES = (
    "experiment",
    "run_name",
    "ckpt_path",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "hydra",
    "tags",
    "task.compile",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.generate_if_missing",
)
_MAX_NAME = 200
_MAX_VALUE = 24


def wandb_api_key_configured(environ: dict[str, str] | None = None, netrc_path: str | None = None) -> bool:
    """True when wandb could authenticate: ``WANDB_API_KEY`` set, or an api.wandb.ai entry in ~/.netrc."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY"):
        return True
    path = netrc_path or environ.get("NETRC") or str(Path("~/.netrc").expanduser())
    if not Path(path).is_file():
        return False
    try:
        hosts = netrc.netrc(path).hosts
    except (netrc.NetrcParseError, OSError):
        return False
    base = environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = re.sub(r"^https?://", "", base).split("/")[0].split(":")[0]
    return host in hosts


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def _is_identity(key: str) -> bool:
    return not any(key == p or key.startswith((p + ".", p + "/")) for p in NON_IDENTITY_OVERRIDES)


def _short_override(override: str) -> str:
    """``key=value`` made path-safe; long values (paths, lists) become an 8-hex digest so names stay readable."""
    key, _, value = override.lstrip("+").partition("=")
    if len(value) > _MAX_VALUE:
        value = hashlib.sha1(value.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", f"{key}={value}").strip("-")


def run_name_from_overrides(experiment: str | None, overrides: Iterable[str]) -> str:
    """``<experiment>`` or ``<experiment>/<identity overrides>`` (sorted, path-safe, bounded length)."""
    base = experiment or "train"
    kept = sorted(_short_override(o) for o in overrides if _is_identity(_override_key(o)))
    if not kept:
        return base
    suffix = "_".join(kept)
    if len(suffix) > _MAX_NAME:
        digest = hashlib.sha1(suffix.encode()).hexdigest()[:8]
        suffix = f"{suffix[: _MAX_NAME - 9]}-{digest}"
    return f"{base}/{suffix}"


def _hydra_cfg():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _run_name() -> str:
    hc = _hydra_cfg()
    if hc is None:
        return "train"
    return run_name_from_overrides(hc.runtime.choices.get("experiment"), hc.overrides.task)


def _sweep_group() -> str | None:
    hc = _hydra_cfg()
    from hydra.types import RunMode

    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    experiment = hc.runtime.choices.get("experiment") or hc.job.name
    return f"{experiment}-{Path(str(hc.sweep.dir)).name}"


def register_resolvers() -> None:
    """Register the ``croco.*`` resolvers (idempotent)."""
    OmegaConf.register_new_resolver("croco.precision", lambda accelerator="auto": default_precision(accelerator),
                                    replace=True)  # fmt: skip
    OmegaConf.register_new_resolver(
        "croco.wandb_offline", lambda: not wandb_api_key_configured(), replace=True
    )
    OmegaConf.register_new_resolver("croco.run_name", _run_name, replace=True)
    OmegaConf.register_new_resolver("croco.sweep_group", _sweep_group, replace=True)


register_resolvers()
