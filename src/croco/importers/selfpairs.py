"""``source=selfpairs``: every view of a pair folder as a pair with itself.

A self-pair (view 2 = view 1) is the easiest cross-view completion there is: the pretraining transforms crop the
two copies independently (``crop<S>`` on larger views shifts one against the other by up to the size difference)
and jitter their colours independently, so the masked patches of view 1 are best filled by finding where the same
pixels lie in view 2. Mixed with real pairs (``data.sources`` weights) they are a training signal for the
decoder's cross-attention to point at the match, which flow and pose need (docs/downstream.md).

Input: a folder of pair shards (``docs/data-format.md``). Each stored pair gives two self-pairs, one per view,
with that view's intrinsics and pose on both sides, co-visibility 1, the pair's scene id (so the train / val
split keeps a scene on one side) and no depth or task extras. Images are re-encoded at ``resolution`` (give the
input's own resolution to keep their size); unreadable pairs are skipped and counted.

    python generate.py source=selfpairs input=data/crossview out=data/crossview_self resolution=80

:func:`generate_selfpairs` is the same import as a callable ``f(out)``, for a data source's ``generate``
(``conf/experiment/crossview_selfpairs.yaml``: the self-pairs are made on first use, after their input).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from croco.data.shards import PairRecord, ShardError, ShardReader, finished_shards, is_unknown
from croco.importers.base import Importer, ImportSummary, SkipPair, WorkItem, import_pairs, settings_from
from croco.importers.images import fit_square


@dataclass(frozen=True)
class ViewItem(WorkItem):
    shard: str
    row: int
    view: int  # 1 or 2


class SelfPairImporter(Importer):
    name = "selfpairs"

    def check_input(self) -> None:
        if not finished_shards(self.settings.input):
            raise FileNotFoundError(f"input={self.settings.input}: expected a folder of pair shards (*.h5), found none")

    def scan(self) -> Iterator[ViewItem]:
        for path in finished_shards(self.settings.input):
            reader = ShardReader(path)
            for row, scene in enumerate(reader.scene):
                for view in (1, 2):
                    yield ViewItem(name=f"{path}:{row}:image{view}", scene=str(scene), shard=str(path), row=row,
                                   view=view)  # fmt: skip

    def load(self, item: ViewItem) -> PairRecord:
        try:
            data = _reader(item.shard).read(item.row, fields=(f"image{item.view}", f"K{item.view}",
                                                                  f"pose{item.view}"))  # fmt: skip
        except ShardError as error:
            raise SkipPair("unreadable pair", str(error).splitlines()[0]) from None
        K = data[f"K{item.view}"]
        image, K = fit_square(data[f"image{item.view}"], None if is_unknown(K) else K, self.settings.resolution)
        pose = data[f"pose{item.view}"]
        pose = None if is_unknown(pose) else pose
        return PairRecord(image, image.copy(), K, K, pose, pose, 1.0, 1.0, item.scene)


@lru_cache(maxsize=8)
def _reader(path: str) -> ShardReader:
    """One reader per shard and worker process (opening validates the shard's index)."""
    return ShardReader(path)


IMPORTER = SelfPairImporter


def generate_selfpairs(
    out: str | os.PathLike,
    input: str | os.PathLike,
    resolution: int,
    pairs_per_shard: int = 500,
    jpeg_quality: int = 95,
    workers: int = 0,
    progress: bool = True,
) -> ImportSummary:
    """Write the self-pairs of the pair shards in ``input`` into ``out``: the import ``generate.py
    source=selfpairs input=... out=... resolution=...`` runs, as a callable for a data source's ``generate``."""
    importer = SelfPairImporter(settings_from(os.path.abspath(input), resolution=int(resolution)))
    return import_pairs(importer, out, pairs_per_shard=pairs_per_shard, jpeg_quality=jpeg_quality, workers=workers,
                        progress=progress)  # fmt: skip
