"""Gradient accumulation (``trainer.accumulate_grad_batches``) through lmlab's Trainer
(lmlab.training.make_trainer), in process: what counts optimizer steps counts them."""

import hydra
import lightning as L
import torch

from lmlab.module import LanguageModule
from lmlab.training import make_trainer
from tests.conftest import TINY, compose_cfg, model_cfg


class Validations(L.Callback):
    """The optimizer steps after which validation ran."""

    def __init__(self):
        self.steps = []

    def on_validation_end(self, trainer, pl_module):
        self.steps.append(trainer.global_step)


def test_validation_comes_every_val_check_interval_optimizer_steps(tmp_path):
    """Lightning counts val_check_interval in training batches: with 2 batches a step, lmlab's run
    validated (and checkpointed) every step where the README says every 2 steps."""
    cfg = compose_cfg([*TINY, f"paths.output_dir={tmp_path}", "trainer.max_steps=4",
                       "trainer.val_check_interval=2", "trainer.accumulate_grad_batches=2",
                       "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_time=null",
                       "+trainer.enable_progress_bar=false"])
    validations = Validations()
    trainer, *_ = make_trainer(cfg, [hydra.utils.instantiate(cfg.logger.csv)], [validations])
    module = LanguageModule(model_cfg([*TINY, "model.vocab_size=64"]), warmup_steps=1, max_steps=4)
    windows = torch.utils.data.DataLoader(torch.randint(0, 64, (16, 17)), batch_size=2)
    trainer.fit(module, train_dataloaders=windows, val_dataloaders=windows)
    assert trainer.global_step == 4 and validations.steps == [2, 4]
