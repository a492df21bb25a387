"""Faults injected into real training runs through the config (``+callbacks.<name>._target_=...``):
they act on the real process, not on mocks."""

from __future__ import annotations

import resource
import signal

import lightning as L
import torch


class PoisonWeights(L.Callback):
    """Sets every weight to NaN after optimizer step ``at_step``: a run that diverges there."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class DiskFullAfter(L.Callback):
    """From optimizer step ``at_step`` on, the process may write no file past ``max_bytes``
    (RLIMIT_FSIZE; writes beyond fail with EFBIG as on a full disk): checkpoints stop fitting."""

    def __init__(self, at_step: int, max_bytes: int = 1 << 20):
        self.at_step, self.max_bytes = at_step, max_bytes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error to handle, not a kill
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_bytes, hard))


class RssRecorder(L.Callback):
    """Writes the process's resident memory (VmRSS, kB) after every training step to ``path``,
    one ``step rss_kb`` line each, when training ends."""

    def __init__(self, path: str):
        self.path, self.rows = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append((trainer.global_step, resident_kb()))

    def on_train_end(self, trainer, pl_module):
        with open(self.path, "w") as f:
            f.writelines(f"{step} {kb}\n" for step, kb in self.rows)


def resident_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
