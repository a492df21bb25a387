"""What exact resumption needs beyond Lightning's own checkpoint: random-number generator state,
checkpoint files replaced atomically on any local file system, and the metric history of a run
resumed in its own directory."""

from __future__ import annotations

import csv
import os
import random
import signal
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmlab.errors import CheckpointSaveError
from lmlab.requeue import hpc_checkpoints, last_checkpoint, slurm_requeued


def requeued_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint a SLURM job started again in the same run directory resumes from: the newer
    of Lightning's HPC checkpoint (saved at the pre-emption signal) and ``checkpoints/last.ckpt``
    (the only one after a kill without the signal, or a requeue by submitit, where the job is
    requeued: ``SLURM_RESTART_COUNT`` > 0). It is named to Lightning, which otherwise loads its
    HPC checkpoint by itself whenever there is one, also where a later ``last.ckpt`` was written
    after it: a job pre-empted once, then killed outright, went back to the pre-emption's step at
    every requeue. None elsewhere (not under SLURM, or nothing to resume)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    hpc, last = hpc_checkpoints(run_dir), last_checkpoint(run_dir)
    found = hpc + ([last] if last.is_file() and (hpc or slurm_requeued()) else [])
    return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None


class RNGState(L.Callback):
    """Saves and restores the torch, numpy and Python generators of the saving process, so
    dropout and anything else drawing random numbers continues as in an uninterrupted run.

    The state is put back when training starts, not when Lightning hands it over: Lightning
    restores callbacks before it creates the training DataLoader's iterator, which draws its base
    seed from torch's generator, and a resumed run then drew other numbers than the uninterrupted
    one (an uninterrupted run made that draw before its first step, long before the checkpoint)."""

    def __init__(self):
        self._restored: dict | None = None  # a checkpoint's state, put back at on_train_start

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}

    def load_state_dict(self, state: dict) -> None:
        self._restored = state  # trainer.validate and trainer.test restore it too, and never train

    def on_train_start(self, trainer, pl_module) -> None:
        state, self._restored = self._restored, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def optimizer_stepped(trainer) -> bool:
    """In ``on_train_batch_end``: the batch just trained ended an optimizer step (always, without
    gradient accumulation; else the last of its ``accumulate_grad_batches`` batches). A checkpoint
    saved after another batch holds part of a step: its gradients are lost and a resumed run
    steps at other batches than an uninterrupted one."""
    return not trainer.fit_loop._should_accumulate()  # Lightning's own test (lightning < 2.7)


class StepBoundarySignals(L.Callback):
    """Holds the pre-emption signal (SIGUSR1) back while training, to the end of an optimizer step:
    Lightning's SLURM handler then saves its checkpoint where ModelCheckpoint saves, between two
    steps, never halfway through one (nor between the batches of an accumulated step), so the
    requeued job resumes exactly.

    The signal's handler (Lightning's, which it sets before training starts) is replaced by one
    that notes the signal, and called at a step's end. Blocking the signal instead
    (``pthread_sigmask``) blocks it in the main thread only: the kernel delivers it to another
    thread (an OpenMP worker, a logger's), and Python runs the handler in the main thread at once,
    mid-step."""

    SIGNALS = (signal.SIGUSR1,)

    def __init__(self):
        self._handlers: dict = {}  # signal -> its handler, while held back
        self._pending: list = []

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread sets handlers (nor did Lightning set one)
        for sig in self.SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):  # not SIG_DFL or SIG_IGN: outside SLURM nothing handles it
                self._handlers[sig] = handler
                signal.signal(sig, self._hold)

    def _hold(self, signum, frame) -> None:
        if signum not in self._pending:
            self._pending.append(signum)

    def _deliver(self) -> None:
        pending, self._pending = self._pending, []
        for sig in pending:
            self._handlers[sig](sig, None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._pending and optimizer_stepped(trainer):
            self._deliver()

    def on_train_end(self, trainer, pl_module):
        self._release()

    def on_exception(self, trainer, pl_module, exception):
        self._release()

    def _release(self) -> None:
        """The handlers back; a signal held (during the last validation) is handled now."""
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._deliver()
        self._handlers = {}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, flushes it to disk and renames
    it over the target: a kill at any moment leaves the previous checkpoint whole. (Lightning's
    own save goes through a temporary file in the system temp dir, and a move across file
    systems, e.g. /tmp to a cluster's shared disk, is a copy that a kill can cut short.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if type(get_filesystem(path)).__name__ != "LocalFileSystem":
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as err:  # a full disk: torch.save reports it as a RuntimeError of its own
            tmp.unlink(missing_ok=True)
            cause = os_error(err)
            if cause is None:
                raise
            kept = (f"the previous {path.name} is intact" if path.exists()
                    else "the checkpoints saved before are intact")
            raise CheckpointSaveError(
                f"could not save checkpoint {path}: {cause.strerror or cause}; {kept}") from err


def os_error(err: BaseException | None) -> OSError | None:
    """The OSError in ``err``'s chain of causes and contexts, if any (e.g. ENOSPC, EFBIG)."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


class CsvHistory(L.Callback):
    """A run resumed in its own directory keeps its whole ``csv/metrics.csv``.

    - The CSV rows logged so far are written out at each step's start and with each checkpoint
      (Lightning writes them every 100 steps), so a run killed after a checkpoint has lost no row
      from before it, except, under SLURM pre-emption, the loss of the step at whose end the
      checkpoint was taken (Lightning logs it after that step's callbacks).
    - Lightning's CSV writer deletes the file when it starts (before any callback's ``setup``),
      so the file is read when the trainer is made, and the rows logged before the checkpoint's
      step are written back as soon as training starts (rows from past the checkpoint, which the
      resumed run logs again, are dropped). A run started afresh starts the file afresh.
    - A resume with nothing left to train (at its plan's last step, or out of ``max_time``) starts
      no training, and Lightning calls no ``on_train_start``: the rows are written back when the
      fit ends (before, the file was left holding the final test loss alone).
    """

    def __init__(self, loggers: list):
        self.csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
        self.rows = {}  # CSV logger -> the rows its file held
        for lg in self.csv_loggers:
            path = Path(lg.log_dir) / "metrics.csv"
            if path.is_file():
                with path.open(newline="") as f:
                    self.rows[lg] = list(csv.DictReader(f))

    def flush(self, *args) -> None:
        for lg in self.csv_loggers:
            lg.save()  # rank 0's; a no-op elsewhere and when nothing new was logged

    on_train_batch_start = on_save_checkpoint = flush

    def on_train_start(self, trainer, pl_module) -> None:
        self.write_back(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write_back(trainer)  # where no training started (a no-op where it did)

    def write_back(self, trainer) -> None:
        for lg, rows in self.rows.items():
            kept = [{k: v for k, v in r.items() if v != ""} for r in rows
                    if r.get("step") and int(float(r["step"])) < trainer.global_step]
            if kept and trainer.is_global_zero:
                lg.experiment.metrics[:0] = kept  # before anything this run has logged
                lg.experiment.save()
        self.rows = {}
