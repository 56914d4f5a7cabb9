"""Plot the cross-view health metric of a pretraining run over training steps.

    python scripts/plot_crossview.py logs/runs/smoke           # newest launch -> <launch>/crossview.png
    python scripts/plot_crossview.py path/to/csv/metrics.csv --out docs/figures/crossview.png

Reads the run's ``csv/metrics.csv`` (Lightning's CSVLogger) and draws ``val/crossview/gap_other`` overall and
per overlap bin (``gap_other_<lo>-<hi>``), with ``gap_blank`` dashed, and next to it the masked loss with the
true view 2, another scene's and a grey one. A gap near 0 means the network ignores view 2
(docs/pretraining.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from croco.utils.runs import find_metrics, read_series, save_figure

PREFIX = "val/crossview/"


def bin_columns(
    series: dict[str, list[tuple[int, float]]], condition: str = "other"
) -> list[tuple[str, str]]:
    """(column, bin label) of the per-bin gaps, ordered by the bin's lower edge."""
    stem = f"{PREFIX}gap_{condition}_"
    found = [(key, key[len(stem) :]) for key in series if key.startswith(stem)]
    return sorted(found, key=lambda item: float(item[1].split("-")[0]))


def plot(series: dict[str, list[tuple[int, float]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gap, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    bins = bin_columns(series)
    colours = plt.get_cmap("viridis")([0.15 + 0.7 * i / max(1, len(bins) - 1) for i in range(len(bins))])
    for (key, label), colour in zip(bins, colours, strict=True):
        steps, values = zip(*series[key], strict=True)
        ax_gap.plot(
            steps, [100 * v for v in values], "o-", ms=2.5, lw=1, color=colour, label=f"overlap {label}"
        )
    for key, style, label in ((f"{PREFIX}gap_other", "o-", "other scene, all pairs"),
                              (f"{PREFIX}gap_blank", "s--", "grey view 2, all pairs")):  # fmt: skip
        if key in series:
            steps, values = zip(*series[key], strict=True)
            ax_gap.plot(steps, [100 * v for v in values], style, ms=3, lw=2, color="black", label=label)
    ax_gap.axhline(0.0, color="grey", lw=0.8)
    ax_gap.set_xlabel("optimizer step")
    ax_gap.set_ylabel("(loss_c - loss_true) / loss_c  [%]")
    ax_gap.set_title("does the network use view 2? (0 = ignored)")
    ax_gap.grid(alpha=0.3)
    ax_gap.legend(fontsize=8)
    for condition, colour in (("true", "tab:blue"), ("other", "tab:orange"), ("blank", "tab:grey")):
        key = f"{PREFIX}loss_{condition}"
        if key in series:
            steps, values = zip(*series[key], strict=True)
            ax_loss.plot(steps, values, "o-", ms=3, color=colour, label=f"view 2: {condition}")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("masked MSE (validation)")
    ax_loss.set_title("validation loss by view 2")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", type=Path, help="metrics.csv, a launch folder or a run folder (newest launch)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default: <launch>/crossview.png)"
    )
    args = parser.parse_args(argv)
    try:
        metrics_csv = find_metrics(args.path)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    series = read_series(metrics_csv)
    if f"{PREFIX}gap_other" not in series:
        print(
            f"error: {metrics_csv} has no {PREFIX}gap_other values (no validation has run yet?)",
            file=sys.stderr,
        )
        return 1
    out = args.out or metrics_csv.parent.parent / "crossview.png"
    plot(series, out, str(metrics_csv))
    steps, gaps = zip(*series[f"{PREFIX}gap_other"], strict=True)
    first, last = f"{100 * gaps[0]:+.2f}% at step {steps[0]}", f"{100 * gaps[-1]:+.2f}% at step {steps[-1]}"
    print(f"{metrics_csv}: gap_other {first}, {last} ({len(gaps)} validations)")
    for key, label in bin_columns(series):
        print(f"  overlap {label}: last {100 * series[key][-1][1]:+.2f}%")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
