import torch

from lmlab.model import Transformer
from tests.conftest import model_cfg


def build_on_meta(overrides):
    """Build the model without allocating or initialising its weights."""
    with torch.device("meta"):
        return Transformer(model_cfg(overrides))


def test_gpt2_124m_parameter_counts():
    # Figures from 'Build a Large Language Model (From Scratch)', matching OpenAI's GPT-2 124M.
    assert build_on_meta(["model=gpt2", "model.tie_weights=false"]).num_params() == 163_009_536
    assert build_on_meta(["model=gpt2", "model.tie_weights=true"]).num_params() == 124_412_160


def test_tied_head_shares_the_embedding():
    m = build_on_meta(["model=gpt2"])
    assert m.lm_head.weight is m.tok_emb.weight


def test_flops_per_token_counts_the_head_but_not_lookups():
    m = build_on_meta(["model=gpt2"])
    n = m.num_params() - m.position.table.weight.numel()  # tied head is a matmul; wpe a lookup
    assert m.flops_per_token() == 6 * n + 12 * 12 * 1024 * 768


def test_every_position_kind_survives_moving_the_model():
    """Lightning moves and casts the model (Module._apply); no component may shadow that."""
    for pos in ("none", "learned", "sinusoidal", "rope", "alibi"):
        m = Transformer(model_cfg(["model.n_layers=1", "model.d_model=32", "model.vocab_size=64",
                                   f"model/position={pos}"]))
        m.to("cpu").double()
        assert m(torch.zeros(1, 4, dtype=torch.long)).logits.dtype == torch.float64


def test_moe_flops_count_only_the_active_experts():
    m = build_on_meta(["model=mixtral"])
    assert m.active_params() < m.num_params()
    n = m.active_params()  # untied: the head is a matmul, the embedding a lookup
    expected = 6 * (n - m.tok_emb.weight.numel()) + 12 * m.cfg["n_layers"] * m.context_length * m.cfg["d_model"]
    assert m.flops_per_token() == expected
