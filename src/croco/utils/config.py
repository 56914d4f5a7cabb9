"""Config helpers of the entry points: ``ConfigError`` (one line naming the key, the value and what is allowed),
the config-group options of ``conf/`` and the command-line check of ``group=option`` choices, which runs before
Hydra composes so that an unknown preset (``model=vit_huge``) is reported in one line with the presets that exist.

The checks of a composed training config live with the tasks (``croco.tasks.checks``): which keys matter
depends on the task.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "check_group_choices",
    "exit_on_unknown_choices",
    "group_options",
    "model_preset",
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
