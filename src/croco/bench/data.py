"""Data-pipeline throughput: pairs per CPU-second for read + decode + crop (+ colour jitter), at 224 px.

    python -m croco.bench.data [--pairs 256] [--seconds 3] [--batch-size 64] [--workers 2] [--no-record]

Writes 256x256 JPEG shards (the ShardWriter default, quality 95) of procedural textured images into a temporary
folder, then measures, single-threaded (= one DataLoader worker core), in pairs per CPU-second:

* ``pil_baseline``  the official-style pipeline: PIL decode, PIL random crop, torchvision ColorJitter on PIL
  images, ToTensor, Normalize (what a plain PIL pipeline does per pair);
* ``read``          fetching the two encoded images from the shard (their CRC32 checked, as training does);
* ``decode_pil`` / ``decode_tv`` / ``decode_sj``   read + decode with PIL, torchvision or simplejpeg (the
  last two use libjpeg-turbo; the training path uses the fastest available, see shards.decode_image_tensor);
* ``read_unverified`` / ``decode_sj_unverified``   ``read`` and ``decode_sj`` without the checksum check, each
  timed in windows alternating with its checked twin so that load changes hit both alike: the difference is
  the cost of the check (printed as a percentage);
* ``worker``        the DataLoader worker path of PairDataModule: read + decode + independent crops + jitter
  parameters + collation into uint8 batches;
* ``jitter_cpu``    the batched colour jitter + normalisation (``finish_batch``) on the CPU, single thread
  (on a GPU it runs in ``on_after_batch_transfer`` and costs the workers nothing);
* ``worker+jitter_cpu``  both on one core (the number to compare with ``pil_baseline``);
* ``jitter_official``  the official jitter alone, for ``jitter_cpu`` to be compared with: torchvision
  ``ColorJitter(0.4, 0.4, 0.4)`` per PIL image (fresh parameters and op order per image), ToTensor and
  Normalize, on already decoded 224x224 crops (two per pair);
* ``dataloader``    optionally (``--workers N``), a real DataLoader epoch: pairs per CPU-second of its
  worker processes (start-up, IPC and shared-memory collation included).

CPU time rather than wall time makes the numbers what one free core gives, even on a busy machine. A row is
appended to docs/benchmarks.md under "## Data pipeline" (file and section created if missing, other sections
kept) with the shared ``croco.bench.record.append_row``; ``load`` is the 1-minute load average at the start.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from croco.bench.record import BENCHMARKS_MD, append_row, cpu_name
from croco.data.shards import PairRecord, ShardReader, ShardWriter, _simplejpeg, _torchvision_decoder

SECTION = "Data pipeline"
UNIT = "pairs per CPU-second"
# result key -> column title in docs/benchmarks.md
COLUMNS = {
    "pil_baseline": "PIL pipeline (decode, crop, jitter)",
    "read": "read",
    "decode_pil": "read+decode PIL",
    "decode_tv": "read+decode torchvision",
    "decode_sj": "read+decode simplejpeg",
    "read_unverified": "read, no checksum",
    "decode_sj_unverified": "read+decode simplejpeg, no checksum",
    "worker": "worker: read+decode+crop",
    "jitter_cpu": "jitter+normalise on CPU (batched)",
    "worker+jitter_cpu": "worker + CPU jitter",
    "jitter_official": "official per-image ColorJitter+normalise (PIL)",
    "dataloader": "DataLoader workers",
}
META = ("date", "machine", "load", "torch", "JPEG 256x256", "unit")


def synthetic_image(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A textured RGB image (several octaves of smooth noise plus a few flat shapes with edges)."""
    image = torch.zeros(1, 3, size, size)
    for cells, amplitude in ((3, 90.0), (12, 45.0), (48, 25.0), (size // 2, 12.0)):
        grid = torch.from_numpy(rng.random((1, 3, cells, cells), dtype=np.float32))
        image += amplitude * torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic")
    array = image[0].permute(1, 2, 0).numpy()
    for _ in range(4):
        y0, x0 = rng.integers(0, size - 32, 2)
        height, width = rng.integers(16, 96, 2)
        array[y0 : y0 + height, x0 : x0 + width] = rng.random(3) * 200
    return np.clip(array, 0, 255).astype(np.uint8)


def make_shards(folder: Path, pairs: int, seed: int = 0, pairs_per_shard: int = 128) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for first in range(0, pairs, pairs_per_shard):
        path = folder / f"shard-{first // pairs_per_shard:05d}.h5"
        with ShardWriter(path, source="bench", resolution=(256, 256), fov_deg=60.0) as writer:
            for index in range(first, min(first + pairs_per_shard, pairs)):
                writer.add(
                    PairRecord(
                        image1=synthetic_image(rng),
                        image2=synthetic_image(rng),
                        K1=np.eye(3),
                        K2=np.eye(3),
                        pose1=np.eye(4),
                        pose2=np.eye(4),
                        covis12=0.6,
                        covis21=0.6,
                        scene=f"scene{index // 16}",
                    )
                )
        paths.append(path)
    return paths


def rate(step: Callable[[int], int], seconds: float, repeats: int = 3) -> float:
    """Items per CPU-second of ``step(i)`` (returns items done): the best of ``repeats`` windows that together
    take ``seconds`` of CPU time, after a warm-up call.

    CPU time (this process, one thread) rather than wall time, and the best window rather than the mean: the
    number is what one free core gives, and other processes competing for the machine barely change it.
    """
    step(0)
    best, index = 0.0, 1
    for _ in range(repeats):
        done, start = 0, time.process_time()
        while (elapsed := time.process_time() - start) < seconds / repeats:
            done += step(index)
            index += 1
        best = max(best, done / elapsed)
    return best


def paired_rates(
    first: Callable[[int], int], second: Callable[[int], int], seconds: float, window: float = 0.1
) -> tuple[float, float]:
    """``rate`` of two steps in short alternating windows (``seconds`` in all), the best window of each: a
    change of the machine's load then hits both alike, which matters when they differ by a few percent."""
    best = [0.0, 0.0]
    for _ in range(max(3, round(seconds / (2 * window)))):
        for k, step in enumerate((first, second)):
            best[k] = max(best[k], rate(step, window, repeats=1))
    return best[0], best[1]


def bench_single_core(folder: Path, seconds: float, batch_size: int) -> dict[str, float]:
    from PIL import Image
    from torchvision import transforms as T

    from croco.data.datamodule import PairDataModule
    from croco.data.transforms import finish_batch

    torch.set_num_threads(1)
    readers = [ShardReader(p) for p in sorted(folder.glob("*.h5"))]
    locations = [(r, i) for r in readers for i in range(len(r))]
    unverified = [ShardReader(p, verify_checksums=False) for p in sorted(folder.glob("*.h5"))]
    unverified_locations = [(r, i) for r in unverified for i in range(len(r))]
    results: dict[str, float] = {}

    def encoded(i: int) -> tuple[bytes, bytes]:
        reader, row = locations[i % len(locations)]
        return reader.encoded_images(row)

    def encoded_unverified(i: int) -> tuple[bytes, bytes]:
        reader, row = unverified_locations[i % len(unverified_locations)]
        return reader.encoded_images(row)

    official = T.Compose(
        [
            T.RandomCrop(224),
            T.ColorJitter(0.4, 0.4, 0.4, 0.0),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )

    def pil_baseline(i: int) -> int:
        for data in encoded(i):
            official(Image.open(io.BytesIO(data)).convert("RGB"))
        return 1

    def decode_pil(i: int) -> int:
        for data in encoded(i):
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return 1

    tv_decode = _torchvision_decoder()
    sj_decode = _simplejpeg()

    def decode_tv(i: int) -> int:
        for data in encoded(i):
            tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), 3, False)
        return 1

    def decode_sj(i: int) -> int:
        for data in encoded(i):
            sj_decode(data, colorspace="RGB")
        return 1

    def decode_sj_unverified(i: int) -> int:
        for data in encoded_unverified(i):
            sj_decode(data, colorspace="RGB")
        return 1

    module = PairDataModule(
        [folder],
        img_size=224,
        transforms="crop224+acolor",
        val_fraction=0.0,
        batch_size=batch_size,
        num_workers=0,
        seed=0,
    )
    module.setup("fit")
    dataset = module.data_train
    assert dataset is not None
    keys = list(iter(module.train_sampler()))

    def worker_batch(i: int) -> int:
        start = (i * batch_size) % max(len(keys) - batch_size, 1)
        dataset.__getitems__(keys[start : start + batch_size])  # what a DataLoader worker runs per batch
        return batch_size

    results["worker"] = rate(worker_batch, seconds)
    batch = dataset.__getitems__(keys[:batch_size])
    results["jitter_cpu"] = rate(lambda i: (finish_batch(batch), batch_size)[1], seconds)
    results["worker+jitter_cpu"] = 1.0 / (1.0 / results["worker"] + 1.0 / results["jitter_cpu"])
    official_jitter = T.Compose([T.ColorJitter(0.4, 0.4, 0.4, 0.0), T.ToTensor(),
                                 T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    crops = [Image.fromarray(view.numpy()) for key in ("img1", "img2") for view in batch[key]]

    def jitter_official(i: int) -> int:
        for k in range(2):
            official_jitter(crops[(2 * i + k) % len(crops)])
        return 1

    results["jitter_official"] = rate(jitter_official, seconds)
    # the references, after the pipeline itself (measured first, on a fresh process heap)
    results["pil_baseline"] = rate(pil_baseline, seconds)
    results["read"], results["read_unverified"] = paired_rates(
        lambda i: (encoded(i), 1)[1], lambda i: (encoded_unverified(i), 1)[1], seconds
    )
    results["decode_pil"] = rate(decode_pil, seconds)
    if tv_decode is not None:
        results["decode_tv"] = rate(decode_tv, seconds)
    if sj_decode is not None:
        results["decode_sj"], results["decode_sj_unverified"] = paired_rates(
            decode_sj, decode_sj_unverified, 2 * seconds
        )
    return results


def checksum_cost(results: dict[str, float]) -> str:
    """The CRC32 check's share of read + decode time, from the paired measurements ("" without them)."""
    if "decode_sj" not in results:
        return ""
    checked, unchecked = 1.0 / results["decode_sj"], 1.0 / results["decode_sj_unverified"]
    per_pair = 1.0 / results["read"] - 1.0 / results["read_unverified"]
    return (
        f"checksum check: {100 * (checked - unchecked) / unchecked:+.1f} % of read+decode simplejpeg time "
        f"(reads alone: {per_pair * 1e6:.1f} us per pair)"
    )


def bench_dataloader(folder: Path, workers: int, batches: int, batch_size: int) -> float:
    """Pairs per CPU-second of the DataLoader worker processes over one epoch of ``batches`` batches.

    Workers' CPU time is read from ``getrusage(RUSAGE_CHILDREN)`` once they have exited (end of a
    non-persistent epoch), so process start-up, IPC and collation into shared memory are included.
    """
    from croco.data.datamodule import PairDataModule

    module = PairDataModule(
        [folder],
        img_size=224,
        transforms="crop224+acolor",
        val_fraction=0.0,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
        pairs_per_epoch=batches * batch_size,
        seed=0,
    )
    module.setup("fit")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = sum(len(batch["scene"]) for batch in module.train_dataloader())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers have been joined by now
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done / cpu


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=256, help="pairs to generate (cycled through)")
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU time per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=0, help="also time a DataLoader with this many workers"
    )
    parser.add_argument("--batches", type=int, default=40, help="batches of the DataLoader measurement")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]  # other processes on the machine skew every number: record it
    with tempfile.TemporaryDirectory(prefix="croco-bench-data-") as tmp:
        folder = Path(tmp)
        print(f"writing {args.pairs} pairs of 256x256 JPEG ...", flush=True)
        paths = make_shards(folder, args.pairs)
        readers = [ShardReader(p) for p in paths]
        sizes = [len(b) for r in readers for i in range(len(r)) for b in r.encoded_images(i)]
        results = bench_single_core(folder, args.seconds, args.batch_size)
        if args.workers:
            results["dataloader"] = bench_dataloader(folder, args.workers, args.batches, args.batch_size)
    for name, title in COLUMNS.items():
        if name in results:
            print(f"{title:>36}: {results[name]:8.0f} {UNIT}")
    if cost := checksum_cost(results):
        print(cost)
    cells = {name: f"{value:.0f}" for name, value in results.items()}
    if "dataloader" in cells:
        cells["dataloader"] += f" ({args.workers} workers)"
    meta = [
        datetime.date.today().isoformat(),
        f"{cpu_name()} ({os.cpu_count()} cores)",
        f"{load_at_start:.1f}",
        torch.__version__.split("+")[0],
        f"q95, {np.mean(sizes) / 1024:.1f} KiB",
        UNIT,
    ]
    if not args.no_record:
        append_row(args.out, SECTION, [*META, *COLUMNS.values()], meta + [cells.get(k, "-") for k in COLUMNS])
        print(f"recorded in {args.out}")
    return results


if __name__ == "__main__":
    main()
