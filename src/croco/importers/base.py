"""The import framework: turn pairs found in existing data into shards (``python generate.py source=<name>``).

How an importer plugs in
------------------------

An importer is a module ``croco.importers.<module>`` that defines a subclass of :class:`Importer` and names it
``IMPORTER = MyImporter``. A source config ``conf/source/<name>.yaml`` with ``source.importer: <module>`` makes
``generate.py source=<name> input=... out=...`` load it by that module name (:func:`load_importer`; no registry
to edit) and build it with the shared settings (:class:`ImportSettings`: ``input``, ``resolution``, ``depth``,
overlap range, from the top-level keys of conf/generate.yaml) and the entries of ``source.options`` as its
keyword-only ``__init__`` arguments (an unknown key is a one-line error). Optional hooks: ``check_input()``
(one-line error for an input it cannot read, before anything else), ``settings_attrs()`` (what the resume check
compares) and the class attribute ``version``. An importer writes two methods:

- ``scan()`` runs once, in the launching process. It walks the input and *yields* small picklable work items
  (subclasses of :class:`WorkItem`, one per pair to import, in a deterministic order: sort what the file
  system lists) and, for what it already knows cannot become a pair (an image without its partner, a line it
  cannot parse), :class:`Skipped` entries with a reason and a one-line detail naming the file.
- ``load(item)`` runs in a worker process and returns one :class:`croco.data.shards.PairRecord` at the shard's
  resolution (square ``settings.resolution``; :mod:`croco.importers.images` reads, resizes and centre-crops an
  image and moves its ``K`` along). Anything unknown stays unknown: ``K1``/``K2``/``pose1``/``pose2``/
  ``covis12``/``covis21`` may be ``None`` and depth pixels ``NaN`` (docs/data-format.md, "Unknown values");
  never invent a number. For a per-file problem (an unreadable image) raise :class:`SkipPair`; any other
  exception stops the import with one line.

The framework does the rest, the same way for every importer: it cuts the item list into shards of
``pairs_per_shard`` items (shard ``i`` holds the pairs of items ``[i * pairs_per_shard, (i + 1) *
pairs_per_shard)`` that loaded, so a skipped item leaves a shard one pair short instead of moving every later
pair); it normalises every scene id with :func:`normalise_scene_id` (the scene id decides the train / val
split); it writes the shards through ``croco.data.shard_jobs`` (the runner the synthetic generator uses too):
output-folder lock, ``workers`` processes, ``num_jobs``/``job_index`` blocks for cluster jobs (submitit), a
progress bar in pairs/s, atomic shards, stale temporary files removed, and resume (a rerun keeps every
finished shard after checking that it came from the same importer, settings and items). At the end it prints
one summary: pairs imported, items skipped per reason, shards kept. Every skipped file is also reported on its
own line as it happens.

A minimal importer::

    @dataclass(frozen=True)
    class ImagePairItem(WorkItem):
        path1: str
        path2: str

    class MyImporter(Importer):
        name = "mine"

        def scan(self):
            for first in sorted(self.settings.input.glob("*_a.png")):
                partner = first.with_name(first.name.replace("_a.png", "_b.png"))
                if not partner.exists():
                    yield Skipped("missing partner", f"{first}: no {partner.name}")
                else:
                    yield ImagePairItem(name=str(first), scene=first.parent.name, path1=str(first),
                                        path2=str(partner))

        def load(self, item):
            size = self.settings.resolution
            image1, _ = fit_square(read_image(item.path1), None, size)
            image2, _ = fit_square(read_image(item.path2), None, size)
            return PairRecord(image1, image2, None, None, None, None, None, None, item.scene)

    IMPORTER = MyImporter

(with ``fit_square`` and ``read_image`` from ``croco.importers.images``) and ``python generate.py source=mine
input=/data/mine out=data/mine``, with a ``conf/source/mine.yaml`` holding ``# @package _global_`` and
``source: {name: mine, importer: mine, options: {}}``, imports it; ``import_pairs(MyImporter(settings), out)``
does the same from Python.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from croco.data.index import normalise_scene_id
from croco.data.shard_jobs import normalise_attr, run_shard_jobs
from croco.data.shards import PairRecord, ShardError, ShardReader, ShardWriter

__all__ = [
    "ImportSettings",
    "Importer",
    "SkipPair",
    "Skipped",
    "WorkItem",
    "import_pairs",
    "load_importer",
    "normalise_scene_id",
]

IMPORTER_NAME_ATTR = "importer"


# --------------------------------------------------------------------------------------------- plug-in API


@dataclass(frozen=True)
class ImportSettings:
    """What every importer shares (compared on resume together with the importer's own options)."""

    input: Path
    resolution: int = 256
    depth: bool = False
    overlap_min: float = 0.0
    overlap_max: float = 1.0

    def as_attrs(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "resolution": int(self.resolution),
            "depth": bool(self.depth),
            "overlap_min": float(self.overlap_min),
            "overlap_max": float(self.overlap_max),
        }


@dataclass(frozen=True)
class WorkItem:
    """One pair to import. ``name`` is what messages show (a file, or two); ``scene`` the raw scene id (the
    framework normalises it). Subclass it (frozen dataclass) to add what ``load`` needs; keep it small, it is
    pickled to the worker that writes its shard."""

    name: str
    scene: str


@dataclass(frozen=True)
class Skipped:
    """Something ``scan`` found that cannot become a pair: ``reason`` is the short key the summary counts
    (``missing partner``, ``unreadable image``, ...), ``detail`` one line naming the file."""

    reason: str
    detail: str


class SkipPair(Exception):
    """Raised by ``Importer.load`` for a per-file problem: the item is skipped, reported and counted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Importer(abc.ABC):
    """Base class of the importers; see the module docstring for how one plugs in."""

    name: ClassVar[str]
    """The source name: stored in the shards' ``source`` attribute and chosen by ``generate.py source=``."""
    version: ClassVar[int] = 1
    """Bump when the same input and settings would give different pairs (resume refuses to mix versions)."""

    def __init__(self, settings: ImportSettings, **options: Any) -> None:
        self.settings = settings
        self.options = dict(options)

    def settings_attrs(self) -> dict[str, Any]:
        """Everything that decides the content of the shards, stored in them and compared on resume: the shared
        settings and the importer's own options (override to normalise or drop options)."""
        return {**self.settings.as_attrs(), "options": dict(sorted(self.options.items()))}

    def check_input(self) -> None:
        """One-line error when ``settings.input`` is not what this importer reads (called before ``scan``)."""
        if not self.settings.input.exists():
            raise FileNotFoundError(f"input={self.settings.input}: does not exist")

    @abc.abstractmethod
    def scan(self) -> Iterable[WorkItem | Skipped]:
        """Yield the work items (deterministic order) and what cannot be imported (``Skipped``)."""

    @abc.abstractmethod
    def load(self, item: Any) -> PairRecord:
        """The pair of one work item, at ``settings.resolution`` (square); ``SkipPair`` for a per-file problem."""


def load_importer(source: str) -> type[Importer]:
    """The importer class of ``source`` (module ``croco.importers.<source>``, attribute ``IMPORTER``)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", source):
        raise ValueError(f"source={source!r}: not an importer name (lower-case letters, digits, _)")
    try:
        module = importlib.import_module(f"croco.importers.{source}")
    except ModuleNotFoundError as error:
        if error.name != f"croco.importers.{source}":
            raise
        raise ValueError(f"source={source!r}: no importer croco.importers.{source}") from None
    importer = getattr(module, "IMPORTER", None)
    if not (isinstance(importer, type) and issubclass(importer, Importer)):
        raise TypeError(f"croco.importers.{source}: IMPORTER must name an Importer subclass")
    return importer


# --------------------------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class ImportJob:
    """One shard: the items it imports and where it goes."""

    index: int
    first_item: int
    items: tuple[WorkItem, ...]
    path: str
    importer: Importer
    jpeg_quality: int

    @property
    def count(self) -> int:
        return len(self.items)

    def attrs(self) -> dict[str, Any]:
        return {
            IMPORTER_NAME_ATTR: self.importer.name,
            "importer_version": self.importer.version,
            "import_settings": self.importer.settings_attrs(),
            "shard_index": self.index,
            "first_item": self.first_item,
            "item_count": len(self.items),
            "items_digest": items_digest(self.items),
        }


def items_digest(items: Iterable[WorkItem]) -> str:
    """A short hash of the items' names: a changed input (files added or removed) changes a shard's items."""
    digest = hashlib.blake2b(digest_size=8)
    for item in items:
        digest.update(item.name.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


@dataclass
class ImportSummary:
    """What an import did: pairs written, shards (and their pairs) kept from an earlier run, and the items
    skipped per reason, those of the kept shards included (a rerun reports the same skips)."""

    imported: int = 0
    kept_pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards_written: int = 0
    shards_kept: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        rate = self.imported / max(self.seconds, 1e-9)
        return (
            f"imported {self.imported} pairs in {self.seconds:.1f} s ({rate:.1f} pairs/s) into "
            f"{self.shards_written} new shard(s), {self.shards_kept} finished shard(s) with {self.kept_pairs} pairs "
            f"kept; skipped {skipped}" + (f" ({reasons})" if reasons else "")
        )


def _report_skip(reason: str, detail: str) -> None:
    print(f"[import] skipped ({reason}): {detail}", flush=True)


def write_import_shard(job: ImportJob, on_pair: Callable[[], None] | None = None) -> dict[str, Any]:
    """Import the items of one shard and write it atomically; returns its counts. Runs in a worker or in-process."""
    importer = job.importer
    size = importer.settings.resolution
    skipped: Counter = Counter()
    with ShardWriter(
        job.path,
        source=importer.name,
        resolution=(size, size),
        jpeg_quality=job.jpeg_quality,
        attrs=job.attrs(),
    ) as writer:
        for item in job.items:
            try:
                record = importer.load(item)
            except SkipPair as skip:
                skipped[skip.reason] += 1
                _report_skip(skip.reason, skip.detail)
            else:
                record.scene = normalise_scene_id(record.scene)
                writer.add(record)
            if on_pair is not None:
                on_pair()
        stats = {"imported": len(writer), "skipped": dict(sorted(skipped.items()))}
        writer.update_attrs({"import_stats": stats})
    return stats


def _check_existing(job: ImportJob) -> None:
    """A finished shard is kept only if the same importer, settings and items made it; else one line."""
    path = Path(job.path)
    try:
        reader = ShardReader(path)
    except ShardError as error:
        raise ShardError(f"{error}; delete it and rerun to import it again") from None
    expected = {
        **job.attrs(),
        "resolution": [job.importer.settings.resolution] * 2,
        "jpeg_quality": job.jpeg_quality,
    }
    for key, value in expected.items():
        found = reader.attrs.get(key)
        if normalise_attr(found) != normalise_attr(value):
            what = "the input changed" if key == "items_digest" else f"this run wants {value!r}"
            raise ValueError(
                f"{path}: existing shard has {key}={found!r}, {what}; use another out folder or delete the "
                "old shards"
            )


def import_pairs(
    importer: Importer,
    out_dir: str | os.PathLike,
    *,
    pairs_per_shard: int = 500,
    jpeg_quality: int = 95,
    workers: int = 0,
    num_jobs: int = 1,
    job_index: int = 0,
    progress: bool = True,
) -> ImportSummary:
    """Scan ``importer``'s input and write this job's shards into ``out_dir``; returns the summary (also printed).

    Resumable, parallel over ``workers`` processes and over ``num_jobs`` cluster jobs exactly as
    ``croco.synth.pipeline.generate_pairs`` (same lock, temporary-file and error rules). Output does not depend
    on the split into workers or jobs: shard ``i`` always holds items ``[i * pairs_per_shard, ...)``.
    """
    for key, value in (("pairs_per_shard", pairs_per_shard), ("num_jobs", num_jobs)):
        if int(value) < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not 0 <= job_index < num_jobs:
        raise ValueError(f"job_index must be in [0, num_jobs={num_jobs}), got {job_index}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if int(importer.settings.resolution) < 1:
        raise ValueError(f"resolution must be a positive integer, got {importer.settings.resolution!r}")
    importer.check_input()
    items: list[WorkItem] = []
    summary = ImportSummary()
    for entry in importer.scan():
        if isinstance(entry, Skipped):
            summary.skipped[entry.reason] += 1
            _report_skip(entry.reason, entry.detail)
        else:
            items.append(entry)
    if not items:
        raise ValueError(
            f"input={importer.settings.input}: no pair found to import (source={importer.name}"
            + (f"; skipped {sum(summary.skipped.values())}" if summary.skipped else "")
            + ")"
        )
    out = Path(out_dir)
    shard_count = math.ceil(len(items) / pairs_per_shard)
    per_job = math.ceil(shard_count / num_jobs)
    jobs = [
        ImportJob(
            index=index,
            first_item=index * pairs_per_shard,
            items=tuple(items[index * pairs_per_shard : (index + 1) * pairs_per_shard]),
            path=str(out / f"shard-{index:05d}.h5"),
            importer=importer,
            jpeg_quality=int(jpeg_quality),
        )
        for index in range(job_index * per_job, min(shard_count, (job_index + 1) * per_job))
    ]
    size = importer.settings.resolution
    result = run_shard_jobs(
        out,
        jobs,
        write=write_import_shard,
        check_existing=_check_existing,
        num_jobs=num_jobs,
        job_index=job_index,
        workers=workers,
        progress=progress,
        describe=f"source={importer.name}, {size}x{size}",
        label="import",
        what="pair import",
    )
    summary.shards_kept = result.kept
    summary.shards_written = len(result.stats)
    summary.seconds = result.seconds
    for stats in result.stats:
        summary.imported += int(stats["imported"])
        summary.skipped.update(stats["skipped"])
    for job in jobs:
        if job.path not in result.written:  # kept: its counts are in its attributes
            stats = ShardReader(job.path).attrs.get("import_stats", {})
            summary.kept_pairs += int(stats.get("imported", 0))
            summary.skipped.update(stats.get("skipped", {}))
    print(f"[import] {out}: {summary.line()}", flush=True)
    return summary


def settings_from(input_path: str | os.PathLike, **values: Any) -> ImportSettings:
    """``ImportSettings`` from plain values (the ``generate.py`` keys), with the types fixed."""
    known = {f.name for f in dataclasses.fields(ImportSettings)} - {"input"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown import settings {unknown}; expected {sorted(known)}")
    return ImportSettings(input=Path(input_path), **values)
