"""Length extrapolation on real Shakespeare tokens, one tiny trained model per position kind."""

from __future__ import annotations

import math

import lightning as L
import pytest

from lmlab.data.datamodule import TokenDataModule
from lmlab.evaluation import resolve_split, score, summary
from lmlab.module import LanguageModule
from tests.conftest import TINY, model_cfg

WINDOWS = 24  # validation windows, the same for the ordinary evaluation and the extrapolation


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "token-cache"
    dm = TokenDataModule(val_docs=["hamlet"], test_docs=["the-tempest"], context_length=16,
                         batch_size=4, train_samples=40, val_windows=WINDOWS, cache_dir=str(cache))
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.mark.parametrize("kind", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_extrapolation_per_position_kind(kind, datamodule):
    L.seed_everything(0, verbose=False)
    module = LanguageModule(model_cfg(TINY + [f"model/position={kind}"]), lr=3e-3, warmup_steps=2,
                            max_steps=8)
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    evaluator = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    val = evaluator.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]

    result = score(module.model, datamodule, "val", [1, 2, 4], max_windows=WINDOWS)
    at = {r["factor"]: r for r in result["extrapolation"]}
    # at the trained length: the same windows, so exactly the ordinary validation loss
    assert at[1]["windows"] == WINDOWS and at[1]["loss"] == pytest.approx(val, abs=1e-5)
    assert result["loss"] == at[1]["loss"] and at[1]["length"] == 16
    positions = at[1]["by_position"]
    assert positions["start"] == list(range(16))
    assert sum(positions["loss"]) / 16 == pytest.approx(val, abs=1e-5)
    if kind == "learned":  # no rows past its table: n/a, not an error
        assert at[2]["loss"] is None and at[4]["loss"] is None and at[4]["by_position"] is None
    else:
        assert math.isfinite(at[4]["loss"]) and at[4]["length"] == 64 and at[4]["windows"] > 0
        assert len(at[4]["by_position"]["loss"]) == 16  # 16 ranges of 4 positions


def test_which_text_is_scored(datamodule, tmp_path):
    assert resolve_split("auto", datamodule) == "test"  # held-out plays: the test play
    text = TokenDataModule(source="text", path=str(tmp_path / "a.txt"), cache_dir=str(tmp_path)) \
        if (tmp_path / "a.txt").write_text("x") else None
    assert resolve_split("auto", text) == "all"  # your own file: all of it
    with pytest.raises(ValueError, match="split: unknown 'dev'; valid choices: auto, train, val"):
        resolve_split("dev", datamodule)


def test_the_summary_speaks_of_a_learned_table_only_when_a_length_is_na():
    row = {"length": 64, "factor": 1, "windows": 3, "loss": 2.0, "ppl": math.exp(2.0)}
    result = {"split": "test", "loss": 2.0, "ppl": math.exp(2.0), "windows": 3, "context_length": 64,
              "tokens": 300, "extrapolation": [row, {**row, "length": 128, "factor": 2}]}
    assert "length extrapolation:\n" in summary(result) and "n/a" not in summary(result)
    result["extrapolation"][1].update(loss=None, ppl=None, windows=0)
    assert "length extrapolation (n/a: positions past a learned table):" in summary(result)
    # a length longer than the text: not a learned table's doing (a RoPE model said it was)
    result["extrapolation"][1].update(length=512, factor=8)
    assert "length extrapolation (n/a: the text holds no window of that length):" in summary(result)
    result["extrapolation"].append({**result["extrapolation"][1], "length": 256, "factor": 4})
    assert ("length extrapolation (n/a: positions past a learned table; the text holds no window "
            "of that length):") in summary(result)
