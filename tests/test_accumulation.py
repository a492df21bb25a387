"""Gradient accumulation (``trainer.accumulate_grad_batches``) through lmlab's Trainer
(lmlab.training.make_trainer), in process: what counts optimizer steps counts them."""

import csv
import time

import hydra
import lightning as L
import pytest
import torch

from lmlab.module import LanguageModule
from lmlab.run_limits import stopped_by
from lmlab.training import make_trainer
from tests.conftest import TINY, compose_cfg, model_cfg


class Validations(L.Callback):
    """The optimizer steps after which validation ran."""

    def __init__(self):
        self.steps = []

    def on_validation_end(self, trainer, pl_module):
        self.steps.append(trainer.global_step)


def fit(tmp_path, *overrides, callbacks=()):
    """A tiny module trained by lmlab's Trainer, 2 batches a step, validating every 2 steps."""
    cfg = compose_cfg([*TINY, f"paths.output_dir={tmp_path}", "trainer.max_steps=4",
                       "trainer.val_check_interval=2", "trainer.accumulate_grad_batches=2",
                       "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_time=null",
                       "+trainer.enable_progress_bar=false", *overrides])
    validations = Validations()
    trainer, *_ = make_trainer(cfg, [hydra.utils.instantiate(cfg.logger.csv)], [validations, *callbacks])
    module = LanguageModule(model_cfg([*TINY, "model.vocab_size=64"]), warmup_steps=1, max_steps=4)
    windows = torch.utils.data.DataLoader(torch.randint(0, 64, (16, 17)), batch_size=2)
    trainer.fit(module, train_dataloaders=windows, val_dataloaders=windows)
    return trainer, validations.steps


def test_validation_comes_every_val_check_interval_optimizer_steps(tmp_path):
    """Lightning counts val_check_interval in training batches: with 2 batches a step, lmlab's run
    validated (and checkpointed) every step where the README says every 2 steps."""
    trainer, validations = fit(tmp_path)
    assert trainer.global_step == 4 and validations == [2, 4]


class SlowFirstBatch(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            time.sleep(0.3)


def test_max_time_stops_at_the_end_of_an_optimizer_step(tmp_path):
    """The time limit runs out in step 1's first batch: training stops once the step is taken, and
    the validation there saves a whole step (Lightning's Timer stopped after the first batch, and
    last.ckpt held half a step, its gradients lost)."""
    trainer, validations = fit(tmp_path, "trainer.max_time={seconds:0.2}", callbacks=[SlowFirstBatch()])
    assert stopped_by(trainer) == "max_time" and validations == [1]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 2
    assert "Timer" in last["callbacks"]  # Lightning's key: a run's training time carries over


class MicroBatchLosses(L.Callback):
    """Each training batch's cross-entropy under the weights it trains with (no dropout in TINY)."""

    def __init__(self):
        self.losses = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            self.losses.append(pl_module._step(batch)[0].item())


def test_train_loss_is_the_mean_over_an_optimizer_steps_batches(tmp_path):
    """Lightning writes a step's values once, at its last batch: train/loss was that batch's loss
    alone, half of what the step trained on. It is the mean of the step's two batches."""
    micro = MicroBatchLosses()
    fit(tmp_path, "trainer.log_every_n_steps=1", callbacks=[micro])
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    logged = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    means = [(a + b) / 2 for a, b in zip(micro.losses[0::2], micro.losses[1::2])]
    assert len(logged) == 4 and len(means) == 4
    assert logged == pytest.approx(means, abs=1e-5)
    assert logged != pytest.approx(micro.losses[1::2], abs=1e-3)  # not the last batch's alone
    # the learning rates: one row per step (Lightning's monitor wrote one per batch of the step)
    lr_steps = [int(r["step"]) for r in rows if r.get("lr-AdamW/pg1")]
    assert lr_steps == sorted(set(lr_steps)) and len(lr_steps) == 4


def test_an_epoch_holds_whole_optimizer_steps(tmp_path, cache_dir):
    """data.train_samples of 3 batches with 2 batches a step: the epoch's third batch began a
    step that the epoch's end cut short, so after 3 steps 5 batches were consumed where a resume
    (global_step x 2) would start at the 6th. The epoch is rounded down to whole steps."""
    from lmlab.training import build_datamodule

    cfg = compose_cfg([*TINY, f"paths.cache_dir={cache_dir}", "data.batch_size=2", "data.train_samples=6"])
    datamodule = build_datamodule(cfg)
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(LanguageModule(model_cfg(TINY)), datamodule=datamodule)
    consumed = trainer.fit_loop.epoch_loop.batch_progress.total.ready
    assert trainer.global_step == 3 and trainer.current_epoch == 3  # three epochs of one step
    assert consumed == 6 == datamodule.state_dict()["train_batches"]
