"""The one way configs become objects: Hydra's ``instantiate`` behind an allow-list of ``_target_`` prefixes.

A config can name any importable callable in ``_target_``; an allow-list keeps a config file (or a CLI
override) from running arbitrary code such as ``os.system``. Every instantiation in the project goes through
:func:`instantiate`, so the list lives in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig

__all__ = [
    "ALLOWED_TARGET_PREFIXES",
    "InstantiationError",
    "check_targets",
    "instantiate",
    "is_allowed_target",
]

# The project's own code and the libraries it builds objects from (trainer, callbacks, loggers, strategies,
# plugins, optimisers). Anything else in a `_target_` is refused.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = ("croco.", "lightning.pytorch.", "torch.optim.")


class InstantiationError(ValueError):
    """A config asked to build something outside the allow-list; the message names the key and the target."""


def is_allowed_target(target: str) -> bool:
    return isinstance(target, str) and target.startswith(ALLOWED_TARGET_PREFIXES)


def _walk(node: Any, where: str):
    """Yield (key path, target) for every ``_target_`` below ``node``; interpolations that point at containers
    (``model: ${model}``) are followed, other values are not resolved."""
    if isinstance(node, DictConfig | Mapping):
        for key in list(node.keys()):
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, node[key]
                continue
            if isinstance(node, DictConfig):
                raw = node._get_node(key)
                if isinstance(raw, DictConfig | ListConfig):
                    child = raw
                elif raw is not None and raw._is_interpolation():
                    # unresolvable here -> None; Hydra reports it when instantiating
                    resolved = raw._maybe_dereference_node(throw_on_resolution_failure=False)
                    child = resolved if isinstance(resolved, DictConfig | ListConfig) else None
                else:
                    child = None
                if child is None:
                    continue
            else:
                child = node[key]
            yield from _walk(child, path)
    elif isinstance(node, ListConfig | Sequence) and not isinstance(node, str | bytes):
        for i, child in enumerate(node):
            yield from _walk(child, f"{where}[{i}]")


def check_targets(cfg: Any, where: str = "") -> None:
    """Raise :class:`InstantiationError` for the first ``_target_`` outside :data:`ALLOWED_TARGET_PREFIXES`."""
    for path, target in _walk(cfg, where):
        if not is_allowed_target(target):
            raise InstantiationError(
                f"{path}={target!r}: target not allowed; allowed prefixes: {', '.join(ALLOWED_TARGET_PREFIXES)}"
            )


def instantiate(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after checking every ``_target_`` in ``cfg`` and in keyword overrides."""
    check_targets(cfg, where=_root_name(cfg))
    for key, value in kwargs.items():
        if isinstance(value, DictConfig | ListConfig | Mapping):
            check_targets(value, where=key)
    return hydra.utils.instantiate(cfg, *args, **kwargs)


def _root_name(cfg: Any) -> str:
    """``trainer`` for ``cfg.trainer``: error messages then name the full key."""
    if isinstance(cfg, DictConfig) and cfg._get_parent() is not None:
        return str(cfg._get_full_key(None) or "")
    return ""

