"""SLURM cluster environment from config (the requeue signal is a name in YAML, a ``signal.Signals`` here)."""

from __future__ import annotations

import signal

from lightning.pytorch.plugins.environments import SLURMEnvironment

__all__ = ["slurm_environment"]


def slurm_environment(auto_requeue: bool = True, requeue_signal: str = "SIGUSR1") -> SLURMEnvironment:
    """Lightning's SLURM environment: on ``requeue_signal`` (sent by ``#SBATCH --signal=SIGUSR1@90``) it saves
    ``hpc_ckpt_<n>.ckpt`` in the trainer's ``default_root_dir`` and requeues the job with ``scontrol requeue``."""
    try:
        sig = signal.Signals[requeue_signal]
    except KeyError:
        raise ValueError(
            f"requeue_signal={requeue_signal!r}: expected a signal name such as SIGUSR1, SIGUSR2, SIGTERM"
        )
    return SLURMEnvironment(auto_requeue=auto_requeue, requeue_signal=sig)
