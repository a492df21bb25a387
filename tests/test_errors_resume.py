"""train.py ckpt_path=... with a checkpoint it cannot resume as asked: another optimizer or a
setting the restored optimizer state would silently replace, or a checkpoint of weights alone.
Refused in one line before training, nothing written to the run's checkpoints."""

from __future__ import annotations

import pytest

from lmlab.checkpoint import load_model
from lmlab.errors import UserError
from lmlab.interop.hf import save_checkpoint
from lmlab.resume_settings import check_resume_settings
from lmlab.validate import check_config
from tests.test_errors_checkpoint import SHORT
from tests.test_errors_config import job_cfg, refused
from tests.test_train_cli import run

MUON = {"_target_": "lmlab.optim.muon", "momentum": 0.95, "ns_steps": 5,
        "adjust_lr_fn": "match_rms_adamw", "ns_dtype": "auto"}
SAVED = {"lr": 2e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 2,
         "max_steps": 2, "min_lr_ratio": 0.1, "optimizer": MUON, "extend": False}


def test_another_optimizer_is_refused_before_training(ckpt, tmp_path):
    """Through train.py: another optimizer crashed in Lightning once the model and data were built."""
    proc = run("train.py", *SHORT, "module/optimizer=adamw", f"ckpt_path={ckpt}",
               f"hydra.run.dir={tmp_path / 'r'}", f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert refused(proc) == ("lmlab: error: module/optimizer=adamw: the checkpoint was trained with "
                             "module/optimizer=muon, whose state it holds; resume with module/optimizer=muon")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_another_lr_is_refused_by_the_config_check(ckpt, tmp_path):
    """Another lr trained on with the checkpoint's, while the run's config and record said the new one."""
    with pytest.raises(UserError, match=r"^module.lr=0.001: the checkpoint's run has module.lr=0.002 and "
                                        r"its optimizer state restores it; resume with module.lr=0.002$"):
        check_config(job_cfg(tmp_path, *SHORT, "module.lr=1e-3", f"ckpt_path={ckpt}"))


def test_a_checkpoint_of_weights_alone_is_not_resumed(ckpt, tmp_path):
    """An imported checkpoint (hf_convert import) holds no optimizer state: it was refused with a
    misleading trainer.max_steps error, or a KeyError traceback once that was matched."""
    weights = save_checkpoint(load_model(ckpt, "cpu"), tmp_path / "weights.ckpt")
    with pytest.raises(UserError) as err:
        check_config(job_cfg(tmp_path, *SHORT, f"ckpt_path={weights}"))
    assert str(err.value) == (f"ckpt_path: {weights} holds a model's weights only (no optimizer state "
                              "or step, as an imported checkpoint), so there is no run to resume; "
                              "generate.py and evaluate.py read it")


def test_what_a_resume_may_change():
    check_resume_settings(SAVED, {**SAVED, "betas": (0.9, 0.95)})  # a tuple is the same betas
    check_resume_settings(SAVED, {**SAVED, "optimizer": {**MUON, "ns_dtype": "float32"}})  # precision
    check_resume_settings(SAVED, {**SAVED, "min_lr_ratio": 0.0, "max_steps": 9, "extend": True})
    check_resume_settings({"optimizer": None}, {**SAVED, "optimizer": None})  # an older checkpoint
    with pytest.raises(UserError, match=r"^module.min_lr_ratio=0.0: .* or add module.extend=true"):
        check_resume_settings(SAVED, {**SAVED, "min_lr_ratio": 0.0})
    with pytest.raises(UserError, match=r"^module.optimizer.momentum=0.9: .*restores it"):
        check_resume_settings(SAVED, {**SAVED, "optimizer": {**MUON, "momentum": 0.9}})
    with pytest.raises(UserError, match=r"^module/optimizer=muon: .*module/optimizer=adamw$"):
        check_resume_settings({**SAVED, "optimizer": None}, SAVED)
