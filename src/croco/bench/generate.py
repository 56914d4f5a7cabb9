"""Pair-generation throughput of the embedded generator: pairs/s at 256x256, everything included.

    python -m croco.bench.generate [--pairs 200] [--resolution 256] [--workers 1 2] [--no-record]

For each worker count, ``generate_pairs`` writes ``--pairs`` pretraining pairs (with depth) into a temporary
folder: sampling, rejected attempts, rendering, co-visibility, JPEG encoding and HDF5 writing are all timed,
as a user would see them. ``workers=1`` runs in this process after a warm-up (texture bank built, as in a long
run); ``workers>1`` uses the process pool, start-up included, with one shard per worker. Per-stage costs (one
full-resolution render, one co-visibility, one JPEG encoding) are timed separately to show where the time
goes. Appends a row to docs/benchmarks.md under "## Pair generation" (file and section created if missing;
other sections are kept as they are).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from croco.bench.record import BENCHMARKS_MD, append_row, cpu_name

SECTION = "Pair generation"
SECTION_INTRO = (
    "Embedded generator throughput (`python -m croco.bench.generate`): pretraining pairs/s written to "
    "shards at the given resolution, rejected attempts, both renders, co-visibility, JPEG encoding and depth "
    "writing included. `pairs/cpu-s` divides by the CPU time of the generating processes (what one free core "
    "gives, less sensitive to other work on the machine). `render`, `covis`, `jpeg` are single-call costs in "
    "ms; `accept` = accepted / second-view attempts; `load` = 1-min load average when the run started."
)
COLUMNS = (
    "date",
    "cpu",
    "cores",
    "resolution",
    "pairs",
    "workers",
    "pairs/s",
    "pairs/cpu-s",
    "render ms",
    "covis ms",
    "jpeg ms",
    "accept",
    "load",
)


def stage_costs(resolution: int, repeats: int = 12) -> dict[str, float]:
    """Median single-call cost (ms) of a full render, a two-way co-visibility and one JPEG encoding."""
    from croco.data.shards import encode_image
    from croco.geometry.cameras import intrinsics_from_hfov
    from croco.geometry.covisibility import covisibility
    from croco.synth.render import CpuRenderer
    from croco.synth.room import build_synthetic_scene
    from croco.synth.viewpoints import SamplingRules, sample_reference_pose

    scene = build_synthetic_scene(0, 0)
    renderer = CpuRenderer(resolution)
    K = intrinsics_from_hfov(60.0, resolution)
    rng = np.random.default_rng(0)
    poses = [sample_reference_pose(scene, rng, SamplingRules())[1] for _ in range(repeats)]
    renderer.render(scene, K, poses[0])  # warm-up (atlas, face table)
    render_times, views = [], []
    for pose in poses:
        start = time.perf_counter()
        views.append(renderer.render(scene, K, pose))
        render_times.append(time.perf_counter() - start)
    covis_times, jpeg_times = [], []
    for a, b, pa, pb in zip(views, views[1:], poses, poses[1:]):
        start = time.perf_counter()
        covisibility(a.depth, b.depth, K, K, pa, pb)
        covis_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        encode_image(a.rgb)
        jpeg_times.append(time.perf_counter() - start)
    return {
        name: 1000.0 * float(np.median(times))
        for name, times in (("render", render_times), ("covis", covis_times), ("jpeg", jpeg_times))
    }


def throughput(pairs: int, resolution: int, workers: int) -> tuple[float, float, float]:
    """(pairs/s, pairs per CPU-second, accepted fraction of second-view attempts) of one generation run into
    a temporary folder."""
    import resource

    from croco.data.shards import ShardReader
    from croco.synth.pipeline import generate_pairs
    from croco.synth.textures import texture_bank

    texture_bank(0)  # a long run builds the bank once; in the pool each worker builds its own (timed)
    per_shard = math.ceil(pairs / max(1, workers))

    def cpu_seconds() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    with tempfile.TemporaryDirectory(prefix="croco-bench-generate-") as folder:
        cpu_start, start = cpu_seconds(), time.perf_counter()
        paths = generate_pairs(
            folder,
            pairs,
            seed=0,
            resolution=resolution,
            pairs_per_shard=per_shard,
            workers=workers,
            progress=False,
        )
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        attempts = accepted = 0
        for path in paths:
            stats = ShardReader(path).attrs["generation_stats"]
            attempts += stats["second_attempts"]
            accepted += stats["pairs"]
    return pairs / seconds, pairs / cpu, accepted / max(1, attempts)


def record(path: Path, row: dict[str, str]) -> None:
    """Append one table row under the section heading, keeping every other section intact (atomic write)."""
    append_row(path, SECTION, list(COLUMNS), [row.get(c, "") for c in COLUMNS], intro=SECTION_INTRO)


def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200, help="pairs generated per measurement")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--record", type=Path, default=BENCHMARKS_MD)
    parser.add_argument(
        "--no-record", action="store_true", help="print only, do not touch docs/benchmarks.md"
    )
    args = parser.parse_args(argv)

    costs = stage_costs(args.resolution)
    print(
        f"[bench.generate] {args.resolution}x{args.resolution}: render {costs['render']:.1f} ms, "
        f"co-visibility (both directions) {costs['covis']:.1f} ms, JPEG {costs['jpeg']:.1f} ms",
        flush=True,
    )
    rows = []
    for workers in args.workers:
        load = os.getloadavg()[0]
        rate, cpu_rate, accept = throughput(args.pairs, args.resolution, workers)
        print(
            f"[bench.generate] workers={workers}: {rate:.1f} pairs/s, {cpu_rate:.1f} pairs per CPU-second "
            f"({args.pairs} pairs, "
            f"{accept:.0%} of second views accepted)",
            flush=True,
        )
        rows.append(
            {
                "date": datetime.date.today().isoformat(),
                "cpu": cpu_name(),
                "cores": str(os.cpu_count()),
                "resolution": str(args.resolution),
                "pairs": str(args.pairs),
                "workers": str(workers),
                "pairs/s": f"{rate:.1f}",
                "pairs/cpu-s": f"{cpu_rate:.1f}",
                "render ms": f"{costs['render']:.1f}",
                "covis ms": f"{costs['covis']:.1f}",
                "jpeg ms": f"{costs['jpeg']:.1f}",
                "accept": f"{accept:.0%}",
                "load": f"{load:.1f}",
            }
        )
    if not args.no_record:
        for row in rows:
            record(args.record, row)
        print(f"[bench.generate] appended {len(rows)} row(s) to {args.record} under '## {SECTION}'")
    return rows


if __name__ == "__main__":
    main()
