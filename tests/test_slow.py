"""Long tests, opt-in: `python -m pytest -m slow`."""

import csv

import pytest

from tests.test_train_cli import run


@pytest.mark.slow
def test_debug_overfit_drives_the_loss_of_one_batch_towards_zero(tmp_path):
    run("train.py", "debug=overfit", "model.n_layers=2", "model.d_model=64", "model.n_heads=4",
        "model.context_length=32", "data.batch_size=4", "trainer.max_steps=150",
        "trainer.precision=32-true", "module.warmup_steps=10", "sample.max_new_tokens=0",
        f"hydra.run.dir={tmp_path / 'r'}", f"paths.cache_dir={tmp_path / 'cache'}", timeout=900)
    rows = list(csv.DictReader(open(tmp_path / "r" / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[0] > 9 and losses[-1] < 1.0  # memorised: from ~ln(50257) to near zero
