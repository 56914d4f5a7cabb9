"""Config helpers of the entry points: ``ConfigError`` (one line naming the key, the value and what is allowed),
the config-group options of ``conf/`` and the command-line check of ``group=option`` choices, which runs before
Hydra composes so that an unknown preset (``model=vit_huge``) is reported in one line with the presets that exist.

The checks of a composed training config live with the tasks (``croco.tasks.checks``): which keys matter
depends on the task. The helpers they share live here: the keys of a config group's files
(:func:`group_keys`) and the one-line error of a key nothing reads, with the nearest valid key
(:func:`unknown_key_error`).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "check_group_choices",
    "entry_config",
    "exit_on_unknown_choices",
    "group_keys",
    "group_options",
    "model_preset",
    "unknown_key_error",
]

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # the Hydra configs of the repository


class ConfigError(ValueError):
    """A config value that cannot work; the one-line message names the key, the value and what is allowed."""


# ------------------------------------------------------------------------------------------ CLI group choices
def group_options(conf_dir: str | Path, group: str) -> list[str]:
    """The options of a config group: the ``*.yaml`` names in ``conf/<group>/``."""
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))


_CHOICE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<group>[A-Za-z_][\w/]*)(@[\w.]+)?=(?P<value>.*)$")


def check_group_choices(argv: Sequence[str], conf_dir: str | Path) -> None:
    """Reject ``group=option`` command-line overrides whose option has no ``conf/<group>/<option>.yaml``.

    Sweeps (``model=a,b``) check every option; lists and functions (``glob(*)``, ``[a,b]``) are left to Hydra.
    """
    conf_dir = Path(conf_dir)
    for arg in argv:
        match = _CHOICE.match(arg)
        if not match or match["prefix"].startswith("~"):
            continue
        group, value = match["group"], match["value"].strip()
        if group.startswith("hydra/"):  # launchers and sweepers also come from installed Hydra plugins
            continue
        if not (conf_dir / group).is_dir() or value in ("", "null") or re.search(r"[\[\]()${}]", value):
            continue
        options = group_options(conf_dir, group)
        for option in (v.strip().strip("'\"") for v in value.split(",")):
            if option and option != "null" and option not in options:
                raise ConfigError(f"{group}={option}: unknown {group} option; allowed: {', '.join(options)}")


def exit_on_unknown_choices(argv: Sequence[str], conf_dir: str | Path = CONF_DIR) -> None:
    """For the Hydra entry points: refuse unknown ``group=option`` overrides before Hydra starts, with one line
    on stderr and exit status 2 (Hydra's own message is a long traceback-like block)."""
    try:
        check_group_choices(argv, conf_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def model_preset(name: str, conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """The CroCoNet keyword arguments of the model preset ``conf/model/<name>.yaml`` (for code outside Hydra)."""
    path = Path(conf_dir) / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model={name}: unknown model option; allowed: {', '.join(group_options(conf_dir, 'model'))}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


# ----------------------------------------------------------------------------------------- keys nothing reads
def group_keys(group: str, conf_dir: str | Path = CONF_DIR) -> set[str]:
    """The top-level keys the options of ``conf/<group>/`` set, all options together (``defaults`` aside)."""
    keys: set[str] = set()
    for path in sorted((Path(conf_dir) / group).glob("*.yaml")):
        node = OmegaConf.load(path)
        if isinstance(node, Mapping):
            keys |= {str(k) for k in node if k != "defaults"}
    return keys


def entry_config(name: str, conf_dir: str | Path = CONF_DIR) -> tuple[set[str], set[str]]:
    """(its own keys, the config groups of its defaults list) of the entry config ``conf/<name>.yaml``."""
    node = OmegaConf.load(Path(conf_dir) / f"{name}.yaml")
    groups = set()
    for entry in node.get("defaults", []):
        if isinstance(entry, Mapping):
            groups |= {str(k).split("@")[0].removeprefix("override ").strip("/") for k in entry}
    return {str(k) for k in node if k != "defaults"}, groups


def unknown_key_error(
    key: str, allowed: Iterable[str], prefix: str = "", hints: Mapping[str, str] | None = None
) -> ConfigError:
    """``masking.ratoi: unknown key; did you mean masking.ratio?``: a key that no component reads, with the
    nearest allowed key (``difflib``), or the allowed keys when none is near. ``hints``: a known better place
    for a key (``{"mask_ratio": "masking.ratio"}``), given as a full key."""
    full = f"{prefix}{key}"
    if hints and key in hints:
        return ConfigError(f"{full}: unknown key; did you mean {hints[key]}?")
    allowed = sorted(set(allowed))
    near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if near:
        return ConfigError(f"{full}: unknown key; did you mean {prefix}{near[0]}?")
    where = prefix.rstrip(".") or "the top level"
    return ConfigError(f"{full}: unknown key; allowed in {where}: {', '.join(allowed) or 'none'}")
