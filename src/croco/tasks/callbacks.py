"""Callbacks of the training runs: prediction panels, throughput and memory, the run's plan and projected wall time,
checkpoints that resume exactly and are never half-written, and the export of the official ``.pth`` at the end of
training."""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from croco.tasks.base import batch_size_of, effective_batch_size, steps_per_epoch
from croco.utils.files import atomic_output
from croco.utils.hardware import memory_in_use_bytes, memory_label

__all__ = [
    "AtomicCheckpointIO",
    "ExportOfficialCheckpoint",
    "NonFiniteCheckpointError",
    "Panels",
    "RunCheckpoint",
    "RunPlan",
    "RunPlanReport",
    "ThroughputMonitor",
    "atomic_save_image",
]

log = logging.getLogger(__name__)


def atomic_save_image(image: Any, path: Path) -> Path:
    """Save a PIL image through a temporary file in the same folder and a rename: never a half PNG."""
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return path


class Panels(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training): a picture of the task's predictions
    on ``num_samples`` samples, drawn by the task's ``render_panel`` (``croco.tasks.base.BaseTask``).

    The samples are spread over the first (non-sanity) validation epoch, evenly spaced batches and positions, so
    they come from different scenes; until a validation has run, the current training batch is used. Successive
    panels show the same samples. Written as ``<out_dir>/step_XXXXXX.png`` and, when a logger is W&B, logged
    with ``log_image`` under ``key``.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 4,
        out_dir: str | os.PathLike | None = None,
        key: str = "val/panel",
    ):
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError(
                f"every_n_steps={every_n_steps}, num_samples={num_samples}: expected integers >= 1"
            )
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.key = key
        self._samples: dict[str, torch.Tensor] | None = None
        self._from_validation = False
        self._plan: dict[int, int] | None = None
        self._collected: list[dict[str, torch.Tensor]] = []
        self._last_step = -1
        self.written: list[Path] = []
        self.failed_uploads = 0

    def _take(self, batch: Any, count: int | None = None) -> dict[str, torch.Tensor]:
        """``count`` (default ``num_samples``) samples at evenly spaced positions of a batch (its tensors)."""
        size = batch_size_of(batch)
        count = min(count or self.num_samples, size)
        index = torch.linspace(0, size - 1, count).round().long()
        return {
            key: value[index.to(value.device)].detach().clone()
            for key, value in batch.items()
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size
        }

    def sampling_plan(self, num_batches: float) -> dict[int, int]:
        """Samples to take per validation batch: evenly spaced batches, shared round-robin."""
        n = self.num_samples
        if not math.isfinite(num_batches) or num_batches <= 1:
            return {0: n}
        last = int(num_batches) - 1
        chosen = sorted({round(i * last / max(1, n - 1)) for i in range(n)})
        plan = dict.fromkeys(chosen, 0)
        for i in range(n):
            plan[chosen[i % len(chosen)]] += 1
        return plan

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._from_validation or trainer.sanity_checking or dataloader_idx != 0:
            return
        if self._plan is None:
            num_batches = trainer.num_val_batches
            self._plan = self.sampling_plan(num_batches[0] if isinstance(num_batches, list) else num_batches)
        if batch_idx in self._plan:
            self._collected.append(self._take(batch, self._plan[batch_idx]))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._collected and not self._from_validation:
            keys = self._collected[0].keys()
            self._samples = {k: torch.cat([c[k] for c in self._collected])[: self.num_samples] for k in keys}
            self._from_validation = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._samples is None:
            self._samples = self._take(batch)
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.render(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._samples is not None and trainer.global_step != self._last_step:
            self.render(trainer, pl_module)

    def _folder(self, trainer: pl.Trainer) -> Path:
        if self.out_dir is not None:
            return self.out_dir
        return Path(trainer.log_dir or trainer.default_root_dir) / "panels"

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Draw and write the panel for the current step (global rank 0 only)."""
        self._last_step = trainer.global_step
        if not trainer.is_global_zero or self._samples is None:
            return None
        samples = {key: value.to(pl_module.device) for key, value in self._samples.items()}
        panel = pl_module.render_panel(samples)
        if panel is None:
            return None
        path = atomic_save_image(panel, self._folder(trainer) / f"step_{trainer.global_step:06d}.png")
        self.written.append(path)
        caption = f"step {trainer.global_step}: {getattr(pl_module, 'panel_caption', '')}"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:  # from the PNG on disk: no temporary copy in the system temp folder
                    logger.log_image(
                        key=self.key, images=[str(path)], step=trainer.global_step, caption=[caption]
                    )
                except Exception as error:  # noqa: BLE001 - a dashboard hiccup must not stop a training run
                    self.failed_uploads += 1
                    log.warning(
                        "panel %s not sent to W&B (%d failures so far): %s", path, self.failed_uploads, error
                    )
        return path


class ThroughputMonitor(Callback):
    """Logs ``perf/pairs_per_s`` (samples per second, all devices) and memory (``perf/cuda_max_allocated_gb`` on a GPU, else
    ``perf/rss_gb`` of rank 0) every ``every_n_steps`` training batches, averaged over those batches. Validation
    time is excluded; the first window of each epoch includes the data-loader start-up."""

    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: expected an integer >= 1")
        self.every_n_steps = every_n_steps
        self._start: float | None = None
        self._pairs = 0
        self._batches = 0
        self._paused: float | None = None
        self.last_pairs_per_s: float | None = None

    def _reset(self) -> None:
        self._start, self._pairs, self._batches = time.perf_counter(), 0, 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused is not None and self._start is not None:
            self._start += time.perf_counter() - self._paused
        self._paused = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            self._reset()
        self._pairs += batch_size_of(batch) * trainer.world_size
        self._batches += 1
        if self._batches < self.every_n_steps:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self.last_pairs_per_s = self._pairs / elapsed
        metrics = {
            "perf/pairs_per_s": self.last_pairs_per_s,
            f"perf/{memory_label(pl_module.device)}": memory_in_use_bytes(pl_module.device) / 1e9,
        }
        if (
            trainer.is_global_zero
        ):  # straight to the loggers: on our cadence, not only on Lightning's log steps
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._reset()


def format_duration(seconds: float) -> str:
    """``45 s``, ``12.5 min``, ``3.2 h``, ``16.6 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


CPU_EXPERIMENTS = "experiment=smoke (~6 min) or experiment=crossview_cpu (~30 min)"


@dataclass(frozen=True)
class RunPlanReport:
    """What a run will cost: its size (from the trainer) and its measured speed (after the warm-up steps)."""

    pairs_per_epoch: int
    steps_per_epoch: int
    pairs_per_step: int  # effective batch: per device x devices x nodes x accumulation
    total_steps: int | None  # None: neither max_steps nor max_epochs bounds the run
    seconds_per_step: float
    measured_steps: int  # optimizer steps the speed was measured over
    from_step: int  # the global step where the measurement ended
    device: str  # the accelerator's type: cpu, cuda, mps

    @property
    def pairs_per_s(self) -> float:
        return self.pairs_per_step / self.seconds_per_step

    @property
    def remaining_s(self) -> float | None:
        """Projected wall time of the training steps still to run (validation excluded)."""
        if self.total_steps is None:
            return None
        return max(self.total_steps - self.from_step, 0) * self.seconds_per_step

    def advice(self, cpu_limit_s: float = 86400.0) -> str | None:
        """One line when the plan is absurd for the hardware: a CPU and more than ``cpu_limit_s`` to go."""
        remaining = self.remaining_s
        if self.device != "cpu" or remaining is None or remaining <= cpu_limit_s:
            return None
        return (f"this run needs {format_duration(remaining)} on a CPU; CPU-sized experiments that learn visibly: "
                f"{CPU_EXPERIMENTS}")  # fmt: skip

    def line(self) -> str:
        total = f"{self.total_steps} optimizer steps in total" if self.total_steps is not None else "no end set"
        remaining = self.remaining_s
        end = f"projected {format_duration(remaining)} to the end" if remaining is not None else "no projection"
        return (
            f"plan: {self.pairs_per_epoch} pairs per epoch ({self.steps_per_epoch} optimizer steps of "
            f"{self.pairs_per_step} pairs), {total}; measured {self.seconds_per_step:.3g} s/step, "
            f"{self.pairs_per_s:.3g} pairs/s (over {self.measured_steps} step(s) up to step {self.from_step}, "
            f"{self.device}); {end} (training steps, validation excluded)"
        )

    def metrics(self) -> dict[str, float]:
        out = {
            "plan/pairs_per_epoch": float(self.pairs_per_epoch),
            "plan/s_per_step": self.seconds_per_step,
            "plan/pairs_per_s": self.pairs_per_s,
        }
        if self.total_steps is not None:
            out["plan/total_steps"] = float(self.total_steps)
            out["plan/projected_h"] = float(self.remaining_s or 0.0) / 3600
        return out


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere): the launch-to-first-step time."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))  # fmt: skip
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return max(time.time() - started, 0.0)


def planned_total_steps(trainer: pl.Trainer) -> int | None:
    """Optimizer steps the run ends at: the lower of ``max_steps`` and ``max_epochs`` x steps per epoch."""
    bounds = []
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        bounds.append(int(trainer.max_steps))
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        bounds.append(int(trainer.max_epochs) * steps_per_epoch(trainer))
    return min(bounds) if bounds else None


class RunPlan(Callback):
    """After ``warmup_steps`` optimizer steps (start-up, first batches), measures ``measure_steps`` more and then
    prints and logs the run's plan (``RunPlanReport``): pairs per epoch, optimizer steps in total, seconds per step,
    pairs/s and the projected wall time to the end; on a CPU with more than ``cpu_limit_hours`` to go, one more line
    points to the CPU-sized experiments. A run that ends before the measurement is complete reports what it
    measured at its end. Validation time is not counted in the speed. The first optimizer step of a launch is
    logged too, with the time since the process started (what a newcomer waits before anything trains)."""

    def __init__(self, warmup_steps: int = 1, measure_steps: int = 5, cpu_limit_hours: float = 24.0):
        if warmup_steps < 0 or measure_steps < 1 or not cpu_limit_hours > 0:
            raise ValueError(f"warmup_steps={warmup_steps}, measure_steps={measure_steps}, cpu_limit_hours="
                             f"{cpu_limit_hours}: expected >= 0, >= 1 and > 0")  # fmt: skip
        self.warmup_steps = warmup_steps
        self.measure_steps = measure_steps
        self.cpu_limit_s = cpu_limit_hours * 3600
        self.report: RunPlanReport | None = None
        self._start: tuple[float, int] | None = None  # (time, global step) where the measurement began
        self._launch: tuple[float, int] | None = None  # (time, global step) at the start of training
        self._paused: float | None = None
        self._batch_start: float | None = None
        self.first_step_s: tuple[float | None, float] | None = None  # (since the launch, the step itself)

    def on_train_start(self, trainer, pl_module) -> None:
        self._launch = (time.perf_counter(), trainer.global_step)
        if self.warmup_steps == 0:
            self._start = self._launch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_s is None and self._batch_start is None:
            self._batch_start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused is not None:
            pause = time.perf_counter() - self._paused
            self._start = (self._start[0] + pause, self._start[1]) if self._start is not None else None
            self._launch = (self._launch[0] + pause, self._launch[1]) if self._launch is not None else None
        self._paused = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._launch is None:
            return
        step = trainer.global_step
        if self.first_step_s is None and step > self._launch[1] and self._batch_start is not None:
            self.first_step_s = (process_age_s(), time.perf_counter() - self._batch_start)
            since = self.first_step_s[0]
            if trainer.is_global_zero:
                log.info("first optimizer step of this launch done%s (the step itself: %s)",
                         f" {format_duration(since)} after the launch" if since is not None else "",
                         format_duration(self.first_step_s[1]))  # fmt: skip
        if self.report is not None:
            return
        if self._start is None:
            if step - self._launch[1] >= self.warmup_steps:
                self._start = (time.perf_counter(), step)
            return
        if step - self._start[1] >= self.measure_steps:
            self._publish(trainer, pl_module, self._start)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.report is not None:
            return
        if self._start is not None and trainer.global_step > self._start[1]:
            self._publish(trainer, pl_module, self._start)
        elif self._launch is not None and trainer.global_step > self._launch[1]:
            self._publish(trainer, pl_module, self._launch)  # shorter than the warm-up: its steps are all there is

    def _publish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, start: tuple[float, int]) -> None:
        steps = trainer.global_step - start[1]
        try:
            spe = steps_per_epoch(trainer)
            per_device = effective_batch_size(trainer) // trainer.accumulate_grad_batches // trainer.world_size
        except ValueError as error:  # an endless loader or no batch size: no plan, but the run goes on
            self._launch = None
            if trainer.is_global_zero:
                log.info("plan: not available (%s)", error)
            return
        self.report = RunPlanReport(
            pairs_per_epoch=int(trainer.num_training_batches) * per_device * trainer.world_size,
            steps_per_epoch=spe,
            pairs_per_step=effective_batch_size(trainer),
            total_steps=planned_total_steps(trainer),
            seconds_per_step=(time.perf_counter() - start[0]) / steps,
            measured_steps=steps,
            from_step=trainer.global_step,
            device=pl_module.device.type,
        )
        if not trainer.is_global_zero:
            return
        log.info(self.report.line())
        advice = self.report.advice(self.cpu_limit_s)
        if advice is not None:
            log.warning(advice)
        for logger in trainer.loggers:
            logger.log_metrics(self.report.metrics(), step=trainer.global_step)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last`` at the very end of training.

    Lightning's own end-of-training ``last`` is skipped once any step-triggered checkpoint was written, so a run
    whose length is not a multiple of ``every_n_train_steps`` would resume from before its end. Written with the
    public ``Trainer.save_checkpoint`` (every rank takes part, as in any checkpoint save)."""

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any):
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.every_n_steps = every_n_train_steps or 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return super().on_train_end(trainer, pl_module)
        step = trainer.global_step
        if step == 0 or (self.every_n_steps and step % self.every_n_steps == 0):
            return None  # nothing trained, or the step trigger wrote `last` at this very step
        path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # before saving: it is part of the state written
        trainer.save_checkpoint(path)
        return None


class NonFiniteCheckpointError(FloatingPointError):
    """The weights or the optimizer state hold NaN or inf: the checkpoint is not written."""


def first_non_finite(tree: Any, where: str = "") -> str | None:
    """The key path of the first floating tensor with a NaN or inf in a checkpoint dict, or None."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            return where or "<tensor>"
        return None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    for key, value in items:
        found = first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


MIN_FREE_BYTES = 64 << 20
"""Less free space than this after a failed write: the failure is reported as a full disk."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to ``.<name>.tmp-<pid>`` in the target folder, fsyncs, then ``os.replace``s.

    Lightning's default goes through an fsspec transaction whose temporary file lives in the system temp
    folder and is *moved* (copied across file systems) into place, so a crash can leave a truncated file.

    Never writes a checkpoint whose weights or optimizer state are not finite (a diverged run would otherwise
    resume from NaNs): it raises :class:`NonFiniteCheckpointError` and the previous file stays. A write that fails
    on a full disk says so (``OSError`` ENOSPC naming the folder); the previous file stays and the temporary one is
    removed."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        bad = first_non_finite({k: checkpoint[k] for k in ("state_dict", "optimizer_states") if k in checkpoint})
        if bad:
            raise NonFiniteCheckpointError(
                f"{path}: not written: {bad} is not finite (the run diverged at global step "
                f"{checkpoint.get('global_step', '?')}); the previous checkpoint is kept"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_output(path) as tmp:
                torch.save(checkpoint, tmp)
        except (OSError, RuntimeError) as error:  # torch reports a full disk as "file write failed"
            folder = Path(path).parent
            if getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(folder).free < MIN_FREE_BYTES:
                raise OSError(errno.ENOSPC, f"no space left on {folder} while writing {Path(path).name}; the "
                              "previous checkpoint is kept") from None  # fmt: skip
            raise
        return None


class ExportOfficialCheckpoint(Callback):
    """At the end of training, write the network in the official ``{"model", "croco_kwargs"}`` layout to
    ``path`` (readable by the official demo, DUSt3R and ``croco.models.load_official_checkpoint``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.exported: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        from croco.models import export_official_checkpoint

        net = pl_module.net
        if getattr(net, "decoder_type", "cross") != "cross":
            log.warning("official export skipped: decoder=%s has no official layout", net.decoder_type)
            return
        self.exported = export_official_checkpoint(net, self.path)
        log.info("exported the network in the official layout to %s", self.exported)
