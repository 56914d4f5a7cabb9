"""Image sizes: the one way an ``int`` or ``(height, width)`` becomes a ``(height, width)`` tuple."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["as_hw"]


def _is_positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and int(value) == value and value >= 1


def as_hw(size: int | Sequence[int] | Any, name: str = "img_size") -> tuple[int, int]:
    """``224 -> (224, 224)``, ``[224, 448] -> (224, 448)`` (lists, tuples, OmegaConf lists); anything else (a
    bool, a string, a fraction, another length, a size below 1) is a one-line ``ValueError`` naming ``name``."""
    is_pair = not isinstance(size, str | bytes) and hasattr(size, "__len__") and hasattr(size, "__getitem__")
    values = list(size) if is_pair else [size, size]
    if len(values) != 2 or not all(_is_positive_int(v) for v in values):
        shown = values if is_pair else size
        raise ValueError(f"{name}={shown!r}: expected a positive int or [height, width] of positive ints")
    return int(values[0]), int(values[1])
