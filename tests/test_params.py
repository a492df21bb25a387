import pytest
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


@pytest.mark.parametrize("overrides", [["model=tiny"], [], ["model=tiny", "model/attention=gqa"],
                                       ["model=mixtral", "model.n_layers=2", "model.d_model=64",
                                        "model.n_heads=4", "model.context_length=32"]])
def test_flops_per_token_equals_torch_flop_counter_on_a_training_step(overrides):
    """The MFU numerator against torch's FlopCounterMode over a real forward and backward (math
    attention, which the counter sees as matmuls; it does not count the CPU flash kernel), plus
    the 6 FLOPs per token the 6N convention charges each vector parameter (gains, biases)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    m = Transformer(model_cfg([*overrides, "model.context_length=32", "model.attention.kernel=manual"]))
    B, T = 2, m.context_length
    idx = torch.randint(0, m.cfg["vocab_size"], (B, T + 1))
    with FlopCounterMode(display=False) as counter:
        loss, _ = m.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
    vectors = sum(p.numel() for p in m.parameters() if p.dim() < 2)
    assert counter.get_total_flops() / (B * T) + 6 * vectors == m.flops_per_token()
