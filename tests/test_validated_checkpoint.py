"""The checkpoint callback (conf/callbacks/default.yaml, lmlab.validated_checkpoint) in a real
Lightning Trainer, over a module whose validation loss at each step is given, so that which
validation is the best, and which is not, is known."""

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lmlab.resume import AtomicCheckpointIO
from tests.conftest import compose_cfg


class ScoredModule(L.LightningModule):
    """One weight trained toward 1; its validation loss at step s is ``scores[s]``."""

    def __init__(self, scores: dict[int, float]):
        super().__init__()
        self.scores = scores
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/loss", self.scores[self.trainer.global_step])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1000, 1))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(2, 1))


def lmlab_checkpoint(tmp_path, **overrides):
    """The checkpoint callback of lmlab's config, writing to ``tmp_path``."""
    cfg = compose_cfg([f"paths.output_dir={tmp_path}"])
    return hydra.utils.instantiate(cfg.callbacks.model_checkpoint, **overrides)


def fit(callback, scores, max_steps, ckpt_path=None, callbacks=(), **kwargs):
    trainer = L.Trainer(max_steps=max_steps, **{"val_check_interval": 3, **kwargs},
                        check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        callbacks=[callback, *callbacks], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    trainer.fit(ScoredModule(scores), ckpt_path=ckpt_path)
    return callback


def saved_step(path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.parametrize("every_n_train_steps", [None, 2])
def test_last_ckpt_holds_the_last_validations_step_also_where_it_was_not_the_best(tmp_path, every_n_train_steps):
    """Step 9's validation, the last, scores worse than step 6's: last.ckpt is still step 9's
    (Lightning 2.6's ModelCheckpoint writes it only beside a new best: it stayed step 6's, or
    step 8's with every_n_train_steps=2, and a resume went back to that step)."""
    cb = fit(lmlab_checkpoint(tmp_path, every_n_train_steps=every_n_train_steps),
             {3: 3.0, 6: 2.0, 9: 5.0}, max_steps=9)
    assert saved_step(cb.dirpath + "/best-step6.ckpt") == 6 and float(cb.best_model_score) == 2.0
    assert saved_step(cb.last_model_path) == 9


@pytest.mark.parametrize("every_n_train_steps, best", [(None, "best-step6.ckpt"), (4, "best-step4.ckpt")])
def test_a_run_checkpointed_by_lightnings_modelcheckpoint_resumes_with_its_best(tmp_path, every_n_train_steps, best):
    """A run started before lmlab used ValidatedCheckpoint (its checkpoints hold the state of
    Lightning's ModelCheckpoint, under that class's key) resumes knowing its best checkpoint:
    the resumed session's worse validations do not replace it."""
    old = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best-step{step}",
                          auto_insert_metric_name=False, monitor="val/loss", mode="min", save_top_k=1,
                          save_last=True, every_n_train_steps=every_n_train_steps)
    fit(old, {3: 3.0, 6: 1.0}, max_steps=6)
    assert old.best_model_path.endswith(best)  # step 4: under step 3's score (Lightning's own rule)
    # (its last.ckpt is step 4's there, older than the validation at step 6: validated again)
    cb = fit(lmlab_checkpoint(tmp_path, every_n_train_steps=every_n_train_steps),
             {6: 4.5, 9: 4.0, 12: 3.5}, max_steps=12, ckpt_path=old.last_model_path)
    assert cb.best_model_path == old.best_model_path
    assert float(cb.best_model_score) == float(old.best_model_score)


class Saves(L.Callback):
    """(global step, training batches) of every checkpoint saved."""

    def __init__(self):
        self.saved = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saved.append((trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.total.ready))


def test_every_n_train_steps_saves_at_the_end_of_an_accumulated_step(tmp_path):
    """With accumulate_grad_batches=2 the batch after a step's two shares its global_step: the
    step save was written again there, over last.ckpt, a step and a half-accumulated batch whose
    gradients no checkpoint holds (a resume then stepped one batch early from there on)."""
    saves = Saves()
    fit(lmlab_checkpoint(tmp_path, every_n_train_steps=2), {s: 1.0 for s in range(7)}, max_steps=6,
        callbacks=[saves], accumulate_grad_batches=2, val_check_interval=6)
    assert saves.saved and all(batches == 2 * step for step, batches in saves.saved)
    assert sorted({step for step, _ in saves.saved}) == [2, 3, 4, 6]  # every 2 steps; validations at 3, 6
