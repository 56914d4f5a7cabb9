"""Streaming: training starts on the first finished shards while the generator fills the folder in a background
process; validation stays the first shards; each epoch's training shards are recorded for an exact resume; a
failed generation is one line."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from croco.data.datamodule import PairDataModule
from croco.data.shards import ShardReader, finished_shards
from croco.data.streaming import BackgroundGeneration, PlannedOutput, planned_output
from croco.synth.pipeline import generate_pairs

# 3 pairs per shard, 2 per scene: scene 1 spans shards 0 and 1, so a validation scene reaches a training shard
TINY = {"resolution": 32, "pairs_per_shard": 3, "pairs_per_scene": 2, "screen_resolution": 0, "progress": False,
        "overlap_min": 0.05}  # fmt: skip


def _module(folder: Path, pairs: int, **overrides) -> PairDataModule:
    options = {"img_size": 32, "transforms": "crop32", "batch_size": 2, "num_workers": 0, "stream_val_shards": 1,
               "generate_if_missing": functools.partial(generate_pairs, pairs=pairs, **TINY)}  # fmt: skip
    options.update(overrides)
    return PairDataModule([{"path": str(folder)}], **options)


def _wait(module: PairDataModule, timeout: float = 120.0) -> None:
    assert module.background is not None
    deadline = time.monotonic() + timeout
    while module.background.running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert module.background.returncode == 0, module.background.failure()


def _identities(dataset) -> list[tuple[str, int]]:
    index = dataset.index
    return [(index.readers[s].path.name, int(r)) for s, r in zip(index.shard, index.local)]


def test_planned_output_reads_the_generator_arguments() -> None:
    assert planned_output(functools.partial(generate_pairs, pairs=1000)) == PlannedOutput(1000, 2)  # default 500 per shard
    assert planned_output(functools.partial(generate_pairs, pairs=10, pairs_per_shard=3)).shards == 4
    assert planned_output(lambda folder: None) is None


def test_training_starts_before_generation_ends_and_takes_new_shards(tmp_path: Path) -> None:
    folder = tmp_path / "stream"
    module = _module(folder, pairs=24)  # 8 shards
    module.prepare_data()  # returns once shard 0 (validation) and one training shard are finished
    assert module.background is not None and module.background.pid is not None
    module.setup("fit")
    first = list(module.train_shards)
    assert first and "shard-00000.h5" not in first and len(first) < 8
    val_before = _identities(module.data_val)
    assert {name for name, _ in val_before} == {"shard-00000.h5"}
    _wait(module)
    assert module.train_dataloader() is not None  # an epoch boundary: takes every shard finished since
    assert module.train_shards == [f"shard-{i:05d}.h5" for i in range(1, 8)]
    assert _identities(module.data_val) == val_before  # validation is a fixed set
    # no scene of the validation shard is trained on (scene 1 continues in shard 1)
    val_scenes = set(ShardReader(folder / "shard-00000.h5").scene)
    index = module.data_train.index
    train_scenes = {index.scene(i) for i in range(len(index))}
    assert not val_scenes & train_scenes
    assert len(module.data_train) == sum(
        1 for p in finished_shards(folder)[1:] for s, o in zip(ShardReader(p).scene, ShardReader(p).overlap)
        if s not in val_scenes
    )  # fmt: skip
    state = module.state_dict()
    assert state["shard_history"][-1][1] == module.train_shards
    assert state["epoch_pairs"] == module.epoch_pairs > 0
    module.close()
    assert not list(folder.glob("*.tmp-*"))


def test_a_resumed_epoch_trains_on_the_shards_it_recorded(tmp_path: Path) -> None:
    """The checkpoint of an epoch that ran on shards 1-2 resumes on shards 1-2, with the same pairs in the same
    order, although the folder holds more shards by then."""
    folder = tmp_path / "stream"
    generate_pairs(folder, 9, **TINY)  # shards 0-2
    early = _module(folder, pairs=18)
    early.setup("fit")
    assert early.train_shards == ["shard-00001.h5", "shard-00002.h5"]
    early_order = early.train_sampler().epoch_keys(0)
    state = {**early.state_dict(), "train_position": {"epoch": 0, "batches": 1}}
    generate_pairs(folder, 18, **TINY)  # shards 3-5 appear
    resumed = _module(folder, pairs=18)
    resumed.setup("fit")
    assert len(resumed.train_shards) == 5  # a fresh start would take them all
    resumed.load_state_dict(state)
    resumed.train_dataloader()
    assert resumed.train_shards == early.train_shards and resumed.epoch_pairs == early.epoch_pairs
    assert _identities(resumed.data_train) == _identities(early.data_train)
    order = resumed.train_sampler().epoch_keys(0)
    assert np.array_equal(order[0], early_order[0]) and np.array_equal(order[1], early_order[1])


def test_the_epoch_length_is_planned_once_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "stream"
    generate_pairs(folder, 9, **TINY)  # 3 of 6 planned shards
    module = _module(folder, pairs=18)
    module.setup("fit")
    share = len(module.data_train) / 6  # overlap-kept share of the 6 pairs in the training shards
    assert module.epoch_pairs == max(len(module.data_train), round(15 * share))  # 18 planned - 3 validation
    assert len(module.train_sampler()) == module.epoch_pairs


def test_a_failed_background_generation_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "stream"
    generate_pairs(folder, 3, **{**TINY, "seed": 1})  # shard 0 made with another seed: the generator refuses it
    module = _module(folder, pairs=9)
    with pytest.raises(RuntimeError) as error:
        module.prepare_data()
    message = str(error.value)
    assert "\n" not in message and f"background generation of {folder} failed (exit 1)" in message
    assert "seed" in message and ".generation.log" in message


def _record_niceness(folder: Path) -> None:
    """A fill callable that writes its own and its worker's scheduling niceness, and its autogroup line."""
    worker = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True,
                            check=True)
    (folder / "nice.txt").write_text(f"{os.nice(0)} {worker.stdout.strip()}")
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        (folder / "autogroup.txt").write_text(autogroup.read_text())


def test_the_background_generator_yields_the_cores_to_training(tmp_path: Path) -> None:
    """The child (and every process it starts) runs BACKGROUND_NICENESS above the training process."""
    from croco.data.streaming import BACKGROUND_NICENESS

    background = BackgroundGeneration(tmp_path, _record_niceness)
    background.start()
    deadline = time.monotonic() + 60
    while background.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert background.returncode == 0, background.failure()
    own = os.nice(0)
    expected = min(own + BACKGROUND_NICENESS, 19)
    assert (tmp_path / "nice.txt").read_text() == f"{expected} {expected}"
    # its own session is its own autogroup, which must yield too (else the group gets an equal share of the CPU);
    # where autogroup scheduling is off (``noautogroup``, some containers) the file is absent or empty (the process
    # is in no autogroup) and the generator's write is refused, which it ignores
    child_group = _autogroup_line(tmp_path / "autogroup.txt")
    if child_group:  # the kernel put the generator in an autogroup
        own_group = _autogroup_line(Path("/proc/self/autogroup"))
        assert child_group[0] != (own_group or [None])[0]  # its own, not the training process's
        assert child_group[-2:] == ["nice", str(BACKGROUND_NICENESS)]


def _autogroup_line(path: Path) -> list[str]:
    """``["/autogroup-<id>", "nice", "<n>"]``, or ``[]`` where the kernel shows no autogroup."""
    return path.read_text().split() if path.exists() else []


def _stubborn_generator(folder: Path) -> None:
    """A fill callable that ignores Ctrl-C and has a worker process of its own (as the generator's pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sleeper = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"
    worker = subprocess.Popen([sys.executable, "-c", sleeper])
    (folder / "worker.pid").write_text(str(worker.pid))
    time.sleep(120)


def test_stop_kills_a_generator_that_ignores_the_interrupt_and_its_workers(tmp_path: Path) -> None:
    background = BackgroundGeneration(tmp_path, _stubborn_generator)
    background.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "worker.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int((tmp_path / "worker.pid").read_text())
    background.stop(timeout=1.0)
    assert background.returncode == -signal.SIGKILL
    for _ in range(50):  # the worker is killed with its group (then reaped by init)
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} of the stopped generation is still running")


def test_bad_stream_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.stream_val_shards=0: expected null or an integer >= 1"):
        _module(tmp_path, pairs=9, stream_val_shards=0)
    with pytest.raises(ValueError, match="needs exactly one source folder"):
        PairDataModule([str(tmp_path / "a"), str(tmp_path / "b")], stream_val_shards=1,
                       generate_if_missing=functools.partial(generate_pairs, pairs=9))  # fmt: skip
    folder = tmp_path / "small"
    generate_pairs(folder, 3, **TINY)  # one shard: nothing left to train on
    with pytest.raises(Exception, match=r"1 shard\(s\); data.stream_val_shards=1 needs 1 for validation"):
        _module(folder, pairs=3).setup("fit")


@pytest.mark.slow  # a real generator process next to the training process: ~15 s idle, minutes under load
@pytest.mark.usefixtures("single_thread")
def test_a_streaming_run_trains_and_records_its_shards(compose_train, tiny_overrides, tmp_path: Path) -> None:
    """End to end through ``train``: an empty folder, generation in the background, epochs that reload the train
    loader, the plan and the shard record in the checkpoint."""
    import torch

    from croco.tasks.training import train

    folder = tmp_path / "generated"
    generator = ("{_target_: croco.synth.pipeline.generate_pairs, _partial_: true, pairs: 12, pairs_per_shard: 3, "
                 "resolution: 64, pairs_per_scene: 2, screen_resolution: 0, progress: false, overlap_min: 0.05}")  # fmt: skip
    cfg = compose_train(
        *tiny_overrides(folder, tmp_path), f"data.generate_if_missing={generator}", "data.stream_val_shards=1",
        "data.pairs_per_epoch=null", "data.batch_size=2", "run_name=stream", "trainer.max_epochs=3",
        "callbacks.panels=null", "callbacks.export=null",
    )  # fmt: skip
    train(cfg)
    last = torch.load(Path(cfg.paths.ckpt_dir) / "last.ckpt", map_location="cpu", weights_only=True)
    state = last["PairDataModule"]
    history = state["shard_history"]
    assert history[0][0] == 0 and all("shard-00000.h5" not in names for _, names in history)
    assert set(history[-1][1]) <= {f"shard-{i:05d}.h5" for i in range(1, 4)}
    assert last["global_step"] == 3 * (state["epoch_pairs"] // 2)  # one epoch length for the whole run
    assert not list(folder.glob("*.tmp-*"))  # the generator finished or was stopped cleanly
