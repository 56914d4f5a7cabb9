"""Draw the figures of docs/pretraining.md from a finished smoke run.

    python train.py experiment=smoke
    python scripts/make_smoke_report.py                 # newest launch of logs/runs/smoke -> docs/figures/

Writes ``smoke_loss.png`` (train loss per step, validation loss and masked-patch PSNR per validation) and
``smoke_panel.png`` (the last reconstruction panel the run wrote), and prints the numbers the page quotes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from croco.utils.runs import find_metrics, read_series, save_figure


def plot(series: dict[str, list[tuple[int, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    steps, loss = zip(*series["train/loss"], strict=True)
    ax_loss.plot(steps, loss, lw=0.8, alpha=0.5, label="train loss (per step)")
    window = max(1, len(loss) // 25)
    smooth = [sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1])
              for i in range(len(loss))]  # fmt: skip
    ax_loss.plot(steps, smooth, lw=1.8, label=f"train loss (mean of {window})")
    if "val/loss" in series:
        vs, vl = zip(*series["val/loss"], strict=True)
        ax_loss.plot(vs, vl, "o-", ms=3, label="val loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("masked MSE (normalised pixels)")
    ax_loss.set_title("CroCo smoke run: loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if "val/psnr_masked" in series:
        ps, pv = zip(*series["val/psnr_masked"], strict=True)
        ax_psnr.plot(ps, pv, "o-", ms=3, color="tab:green")
    ax_psnr.set_xlabel("optimizer step")
    ax_psnr.set_ylabel("dB")
    ax_psnr.set_title("val PSNR on masked patches")
    ax_psnr.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, default=Path("logs/runs/smoke"), help="run folder (stable per run name)"
    )
    parser.add_argument("--launch", type=Path, default=None, help="launch folder (default: the newest one)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    try:
        metrics_csv = find_metrics(args.launch or args.run)
    except FileNotFoundError as error:
        print(f"error: {error} (run the smoke experiment first)", file=sys.stderr)
        return 1
    launch = metrics_csv.parent.parent
    series = read_series(metrics_csv)
    if "train/loss" not in series:
        print(f"error: {launch}/csv/metrics.csv has no train/loss column", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    plot(series, args.out / "smoke_loss.png")
    panels = sorted((launch / "panels").glob("step_*.png"))
    if panels:
        shutil.copyfile(panels[-1], args.out / "smoke_panel.png")
    steps, loss = zip(*series["train/loss"], strict=True)
    k = min(10, len(loss))
    head, tail = sum(loss[:k]) / k, sum(loss[-k:]) / k
    print(f"launch: {launch}")
    print(f"train loss: {loss[0]:.3f} at step {steps[0]}; mean of the first {k} logged values {head:.3f}, "
          f"of the last {k} {tail:.3f} (steps {steps[-k]}-{steps[-1]})")  # fmt: skip
    for key, best in (("val/loss", min), ("val/psnr_masked", max), ("perf/pairs_per_s", None)):
        if key in series:
            values = [v for _, v in series[key]]
            extra = (
                f", best {best(values):.3f}" if best else f", median {sorted(values)[len(values) // 2]:.1f}"
            )
            print(f"{key}: first {values[0]:.3f}, last {values[-1]:.3f}{extra}")
    stamps = [line[1:24] for line in (launch / "train.log").read_text().splitlines() if line.startswith("[")]
    if len(stamps) >= 2:
        from datetime import datetime

        start, end = (datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t in (stamps[0], stamps[-1]))
        print(f"wall time (train.log): {(end - start).total_seconds() / 60:.1f} min")
    print(f"panel: {panels[-1] if panels else 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
