"""What the machine can do: fast bf16 on this CPU, the precision to train in, the memory in use.

Kept free of Lightning so configs can ask these questions (through resolvers) before anything is built.
"""

from __future__ import annotations

import functools
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["cpu_flags", "cpu_supports_fast_bf16", "default_precision", "memory_in_use_bytes", "memory_label"]

# AMX tiles with bf16, or AVX-512 with the bf16 dot product: the CPU has bf16 matmul kernels faster than fp32.
# Without either, bf16 autocast on a CPU is emulated and slower than fp32, so it is not worth it.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where the file does not exist)."""
    path = Path(cpuinfo)
    if not path.is_file():
        return frozenset()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_supports_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU has native bf16 matmul (AMX or AVX512-BF16); Apple silicon counts as native too."""
    if flags is None:
        if sys.platform == "darwin":
            import torch

            return torch.backends.mps.is_available()
        flags = cpu_flags()
    return any(flag in flags for flag in FAST_BF16_CPU_FLAGS)


def default_precision(accelerator: str = "auto") -> str:
    """The Lightning ``precision`` to train in on ``accelerator`` ("cpu", "gpu"/"cuda" or "auto").

    GPUs: ``bf16-mixed`` where supported (Ampere and newer), else ``16-mixed`` (the official fp16 AMP).
    CPUs: ``bf16-mixed`` only with native bf16 kernels, else ``32-true``.
    """
    import torch  # deferred: configs compose (and the CLI reports errors) without loading torch

    accelerator = str(accelerator).lower()
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "16-mixed"
        return "bf16-mixed"
    if accelerator == "cpu":
        return "bf16-mixed" if cpu_supports_fast_bf16() else "32-true"
    raise ValueError(f"trainer.accelerator={accelerator!r}: expected one of cpu, gpu, cuda, auto")


def memory_in_use_bytes(device: torch.device | str | None = None) -> int:
    """Peak CUDA memory allocated on ``device`` if it is a GPU, else the process resident set size."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_label(device: torch.device | str | None = None) -> str:
    """The metric name that says which memory ``memory_in_use_bytes`` measured."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    return "cuda_max_allocated_gb" if device.type == "cuda" else "rss_gb"

