"""Reading a finished run back: its launch folders, its ``csv/metrics.csv`` as series, and writing a figure.

A run folder (``logs/runs/<run_name>``) holds one ``launches/<time>`` folder per launch, each with the CSV
logger's ``csv/metrics.csv`` (see docs/pretraining.md). The report scripts under ``scripts/`` read runs
through these functions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from croco.utils.files import atomic_output

__all__ = ["find_metrics", "read_series", "save_figure"]

Series = dict[str, list[tuple[int, float]]]


def find_metrics(path: str | os.PathLike) -> Path:
    """A ``metrics.csv`` itself, a launch folder holding ``csv/metrics.csv``, or a run folder (its newest launch);
    ``FileNotFoundError`` with one line naming the path otherwise."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "csv" / "metrics.csv").is_file():
        return path / "csv" / "metrics.csv"
    launches = sorted((p for p in (path / "launches").glob("*") if (p / "csv" / "metrics.csv").is_file()),
                      key=lambda p: p.stat().st_mtime)  # fmt: skip
    if not launches:
        raise FileNotFoundError(f"{path}: no metrics.csv, csv/metrics.csv or launches/*/csv/metrics.csv")
    return launches[-1] / "csv" / "metrics.csv"


def read_series(metrics_csv: str | os.PathLike) -> Series:
    """Every column of a Lightning ``CSVLogger`` file as (step, value) points, skipping empty and non-finite
    cells (each logged key has a value only on the rows of the steps where it was logged)."""
    import csv

    series: Series = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                number = float(value)
                if math.isfinite(number):
                    series.setdefault(key, []).append((int(row["step"]), number))
    return series


def save_figure(fig: Any, out: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG through the project's atomic output (never a half-written file)."""
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out)
