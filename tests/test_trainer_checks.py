"""``trainer.*`` values checked with the config (lmlab.trainer_checks), before the data and model
are built: each bad value is one line naming it; each form Lightning accepts passes."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import UserError
from lmlab.trainer_checks import check_trainer

GOOD = {"precision": "bf16-mixed", "accelerator": "cpu", "devices": 1, "num_nodes": 1,
        "max_time": "00:00:08:45", "val_check_interval": 80, "gradient_clip_val": 1.0}


@pytest.mark.parametrize("key, value", [
    ("devices", "auto"), ("devices", [0, 1]), ("devices", "0,1"), ("devices", -1), ("devices", 2),
    ("max_time", None), ("max_time", {"minutes": 30}), ("max_time", "1:02:03:04"),
    ("val_check_interval", 0.5), ("val_check_interval", 1.0), ("val_check_interval", None),
    ("gradient_clip_val", None), ("gradient_clip_val", 0), ("precision", 32), ("precision", "16-mixed"),
    ("accelerator", "auto"),
])
def test_what_lightning_accepts_passes(key, value):
    check_trainer({**GOOD, key: value})


@pytest.mark.parametrize("key, value, message", [
    ("precision", "bf17", "trainer.precision: unknown 'bf17'; valid choices: bf16-mixed, bf16-true"),
    ("accelerator", "tpu", "trainer.accelerator: unknown 'tpu'; valid choices: auto, cpu, gpu, cuda, mps"),
    ("devices", 0, "trainer.devices=0: must be a count >= 1 (-1: all), auto, or a list"),
    ("devices", [], "trainer.devices=[]: must be a count >= 1"),
    ("num_nodes", 0, "trainer.num_nodes=0: must be an integer >= 1"),
    ("max_time", "10min", "trainer.max_time='10min': must be DD:HH:MM:SS (e.g. 00:00:08:45), a dict"),
    ("max_time", "00:10", "trainer.max_time='00:10': must be DD:HH:MM:SS"),
    ("max_time", {"minutes": -1}, "trainer.max_time={'minutes': -1}: must be DD:HH:MM:SS"),
    ("max_time", {"mins": 1}, "trainer.max_time={'mins': 1}: must be DD:HH:MM:SS"),
    ("max_time", "00:00:8:45", "trainer.max_time='00:00:8:45': must be DD:HH:MM:SS"),
    ("val_check_interval", 0, "trainer.val_check_interval=0: must be a number of steps >= 1, a "
                              "fraction of an epoch in (0, 1], or null"),
    ("val_check_interval", 1.5, "trainer.val_check_interval=1.5: must be"),
    ("gradient_clip_val", -1, "trainer.gradient_clip_val=-1: must be a number >= 0 or null"),
])
def test_a_bad_value_is_one_line(key, value, message):
    with pytest.raises(UserError) as err:
        check_trainer({**GOOD, key: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_is_refused():
    """The README's `model=gpt2 trainer=gpu` on a CPU machine: Lightning said 'No supported gpu
    backend found!' in a five-line instantiate error once the model was built."""
    with pytest.raises(UserError, match="trainer.accelerator=gpu: torch sees no CUDA device here"):
        check_trainer({**GOOD, "accelerator": "gpu"})


@pytest.mark.parametrize("trainer, ok", [
    ({"max_time": "00:00:08:45"}, True), ({"max_time": "1:02:03:04"}, True),
    ({"max_time": {"minutes": 1.5}}, True),
    ({"max_time": "00:00:8:45"}, False),  # Lightning's Timer wants two digits
    ({"val_check_interval": 80, "check_val_every_n_epoch": None}, True),
    ({"val_check_interval": 0.5, "check_val_every_n_epoch": 1}, True),
    ({"val_check_interval": 0.5, "check_val_every_n_epoch": None}, False),  # lmlab's default: null
    ({"val_check_interval": 1.0, "check_val_every_n_epoch": None}, False),
])
def test_the_checks_agree_with_lightnings_trainer(trainer, ok):
    """Each value passes the check exactly when Lightning's Trainer takes it: one the check passed
    and the Trainer refused (`max_time=00:00:8:45`, `val_check_interval=0.5` beside lmlab's
    `check_val_every_n_epoch: null`) failed in a five-line instantiate error once the model was
    built."""
    import lightning as L

    try:
        L.Trainer(**trainer, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
        lightning_ok = True
    except Exception:
        lightning_ok = False
    try:
        check_trainer({**GOOD, **trainer})
        lmlab_ok = True
    except UserError:
        lmlab_ok = False
    assert lightning_ok == lmlab_ok == ok
