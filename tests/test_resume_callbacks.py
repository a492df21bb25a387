"""lmlab's resume callbacks (lmlab.resume) in a real Lightning Trainer, in process, over a module of
one weight: what they rely on Lightning doing, and when, is checked where it happens."""

import csv
import os
import signal
import threading

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lmlab.resume import CsvHistory, RNGState, StepBoundarySignals


class Draws(L.LightningModule):
    """One weight trained toward 1; each step draws a random number, as dropout does."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.draws: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        self.draws[self.global_step] = torch.rand(1).item()
        loss = (self.w - 1).pow(2).sum()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1000, 1))


class SaveAt(L.Callback):
    """Saves a checkpoint at the end of training step ``step``, where ModelCheckpoint saves."""

    def __init__(self, step: int, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def fit(module, max_steps, callbacks=(), ckpt_path=None, **kwargs):
    L.seed_everything(0, verbose=False)
    kwargs = {"logger": False, **kwargs}
    trainer = L.Trainer(max_steps=max_steps, callbacks=list(callbacks), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        **kwargs)
    trainer.fit(module, ckpt_path=ckpt_path)
    return module


def test_a_resumed_run_draws_the_random_numbers_of_an_uninterrupted_one(tmp_path):
    """Lightning restores callbacks' state before it creates the training DataLoader's iterator,
    which draws from torch's generator: restored there, the resumed run's draws were shifted."""
    full = fit(Draws(), 6, [RNGState(), SaveAt(3, tmp_path / "step3.ckpt")])
    resumed = fit(Draws(), 6, [RNGState()], ckpt_path=tmp_path / "step3.ckpt")
    assert sorted(resumed.draws) == [3, 4, 5]
    assert resumed.draws == {s: full.draws[s] for s in (3, 4, 5)}


def csv_rows(run_dir) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("resume", [{"max_steps": 3}, {"max_steps": 6, "max_time": "00:00:00:00"}])
def test_a_resume_with_nothing_left_to_train_keeps_the_csv_history(tmp_path, resume):
    """Resumed at its plan's last step (a job killed or requeued after its last checkpoint), or
    with its time limit spent, a run trains nothing: Lightning starts no training, so no
    ``on_train_start``, but its CSV writer deletes metrics.csv all the same. The run's history was
    lost (the file held only what came after the fit, the final test loss)."""
    def logger():
        return CSVLogger(tmp_path, name="csv", version="")

    first = logger()
    fit(Draws(), 3, [SaveAt(3, tmp_path / "step3.ckpt"), CsvHistory([first])], logger=first,
        log_every_n_steps=1)
    before = csv_rows(tmp_path)
    assert [int(r["step"]) for r in before if r["train/loss"]] == [0, 1, 2]
    again = logger()
    max_steps = resume.pop("max_steps")
    fit(Draws(), max_steps, [CsvHistory([again])], logger=again, log_every_n_steps=1,
        ckpt_path=tmp_path / "step3.ckpt", **resume)
    assert [r for r in csv_rows(tmp_path) if r["train/loss"]] == [r for r in before if r["train/loss"]]


class SignalledMidStep(Draws):
    """Sends itself SIGUSR1 inside its first training step."""

    def training_step(self, batch, batch_idx):
        if self.global_step == 0 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
            sum(range(10**5))  # Python code, where a delivered signal's handler runs
        return super().training_step(batch, batch_idx)


def test_the_preemption_signal_is_handled_at_the_end_of_an_optimizer_step():
    """The handler (Lightning's SLURM handler saves a checkpoint there) runs where a step has
    ended: not mid-step, and not between the batches of an accumulated step. Blocking SIGUSR1 in
    the main thread let the kernel hand it to another thread (here a waiting one, in a real run
    OpenMP's workers), and Python ran the handler at once, inside the training step."""
    progress = []

    def handler(signum, frame):  # stands in for Lightning's SLURM handler
        loop = trainer.fit_loop.epoch_loop
        progress.append((trainer.global_step, loop.batch_progress.total.ready,
                         loop.batch_progress.total.processed))

    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()  # a thread that does not block the signal
    before = signal.signal(signal.SIGUSR1, handler)
    try:
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, callbacks=[StepBoundarySignals()],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(SignalledMidStep())
    finally:
        signal.signal(signal.SIGUSR1, before)
        done.set()
        other.join()
    assert progress == [(1, 2, 2)]  # once, after step 1's two batches, both trained
