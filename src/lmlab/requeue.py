"""What a run directory and the environment say about a restart, read without Lightning (the
command-line checks run before it is imported): whether SLURM started this job again after a
requeue, and whether the directory holds Lightning's SLURM checkpoint, which Lightning resumes
from by itself."""

from __future__ import annotations

import os
from pathlib import Path


def slurm_requeued() -> bool:
    """SLURM started this job again after a requeue (``SLURM_RESTART_COUNT`` > 0)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def hpc_checkpoints(run_dir: str | Path) -> list[Path]:
    """Lightning's SLURM checkpoints in ``run_dir``, ``hpc_ckpt_<n>.ckpt`` (one per pre-emption)."""
    return sorted(Path(run_dir).glob("hpc_ckpt_*.ckpt"))


def has_hpc_checkpoint(run_dir: str | Path) -> bool:
    """``run_dir`` holds Lightning's SLURM checkpoint, ``hpc_ckpt_<n>.ckpt``."""
    return bool(hpc_checkpoints(run_dir))


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where the run in ``run_dir`` keeps its last checkpoint (callbacks.model_checkpoint)."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"
