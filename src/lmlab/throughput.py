"""Training throughput: tokens per second and model FLOPs utilization, per step and over the run."""

from __future__ import annotations

import time

import lightning as L
import torch

from lmlab.hardware import peak_flops, peak_flops_source, precision_dtype


class ThroughputMeter(L.Callback):
    """Every training step it logs ``train/tokens_per_s`` (all ranks' tokens over the time since
    the previous step ended; validation left out) and ``train/mfu``: one device's model FLOPs per
    second (``Transformer.flops_per_token``) over the peak of its device and precision
    (lmlab.hardware.peak_flops; on a CPU measured at the start, and again at the end for the run's
    figure, the higher kept). Over the run it keeps the tokens of all batches but the first
    (warm-up) over their summed step times, data loading, validation and checkpointing left out:
    steadier than any one step's figure.

    A resumed run's figures are its last session's: a rate needs no earlier sessions to be right,
    and a requeued job may run on another device, against another peak. Its training time is the
    whole run's (lmlab.train_clock), as its steps and tokens are."""

    def __init__(self):
        self.tokens, self.seconds, self._batches = 0, 0.0, 0
        self._step_start: float | None = None
        self._last_end: float | None = None  # None after validation: the next step counts from its start
        self.flops_per_token: int | None = None
        self.peak: float | None = None  # FLOP/s of one device
        self.world_size = 1
        self.peak_of = ""  # what the peak is, for the log line

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self.flops_per_token = pl_module.model.flops_per_token()
            device, dtype = trainer.strategy.root_device, precision_dtype(trainer.precision)
            self.peak = self.device_peak(trainer)
            self.peak_of = (f"the {device.type}'s {str(dtype).removeprefix('torch.')} peak "
                            f"({peak_flops_source(device)})")
            self.world_size = trainer.world_size

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.strategy.root_device.type == "cuda":  # the step's kernels run behind Python
            torch.cuda.synchronize(trainer.strategy.root_device)
        now = time.perf_counter()
        tokens = (batch.shape[1] - 1) * batch.shape[0]  # this rank's
        self._batches += 1
        if self._batches > 1:
            self.seconds += now - self._step_start
            self.tokens += tokens * trainer.world_size
        dt = max(now - (self._last_end or self._step_start), 1e-9)
        self._last_end = now
        pl_module.log("train/tokens_per_s", tokens * trainer.world_size / dt, prog_bar=True)
        if self.peak:
            pl_module.log("train/mfu", tokens * self.flops_per_token / dt / self.peak, prog_bar=True)

    @staticmethod
    def device_peak(trainer) -> float | None:
        return peak_flops(trainer.strategy.root_device, precision_dtype(trainer.precision))

    def on_train_end(self, trainer, pl_module):
        # a CPU's peak measured again: taken while other work shared the cores, the first
        # measurement would put the run's MFU above 100%
        if self.peak and trainer.strategy.root_device.type == "cpu":
            self.peak = max(self.peak, self.device_peak(trainer))

    def on_validation_start(self, trainer, pl_module):
        self._last_end = None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    @property
    def mfu(self) -> float | None:
        """The run's MFU: one device's share of ``tokens_per_s`` in FLOPs over its peak."""
        tps = self.tokens_per_s
        if tps is None or not self.peak:
            return None
        return tps / self.world_size * self.flops_per_token / self.peak

    def summary(self) -> str:
        """One line for the log: the run's tokens/s and, where the peak is known, its MFU."""
        line = f"training throughput {self.tokens_per_s:,.0f} tokens/s"
        if self.mfu is not None:
            line += (f", MFU {self.mfu:.1%} ({self.flops_per_token / 1e6:,.1f} MFLOPs per token, against "
                     f"{self.peak_of}, {self.peak / 1e9:,.0f} GFLOP/s)")
        return line
