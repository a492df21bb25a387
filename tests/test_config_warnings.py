"""Settings that are valid but change nothing: a warning names them, and training goes on."""

from lmlab.validate import check_config
from tests.test_errors_config import job_cfg


def test_grouped_attention_with_as_many_kv_heads_as_heads_is_named_multi_head(tmp_path, caplog):
    """An ablation arm model/attention=gqa (2 kv heads) on a 2-head model would silently repeat mha."""
    check_config(job_cfg(tmp_path, "model/attention=gqa", "model.n_heads=4"))
    assert "multi-head attention" not in caplog.text
    check_config(job_cfg(tmp_path, "model/attention=gqa", "model.n_heads=2"))
    assert "model.attention.n_kv_heads=2 equals model.n_heads: this is multi-head attention" in caplog.text


def test_a_window_no_shorter_than_the_context_is_named_full_attention(tmp_path, caplog):
    """A window arm at the training context would repeat the full-attention arm in training."""
    check_config(job_cfg(tmp_path, "model.attention.window=15"))  # FAST's context is 16
    assert "model.attention.window" not in caplog.text
    check_config(job_cfg(tmp_path, "model.attention.window=16"))
    assert ("model.attention.window=16 is not shorter than model.context_length=16: every query "
            "sees its whole context") in caplog.text
