"""model.activation_checkpointing=true: the blocks keep only their inputs for backward and run
again there; the loss, the gradients, MoE's token counts and generation are those of a plain pass."""

import pytest
import torch
from torch.utils.checkpoint import set_checkpoint_early_stop

from lmlab.hardware import cpu_bytes_kept
from lmlab.model import Transformer
from lmlab.model.moe import MoE
from lmlab.sampling import sample_tokens
from tests.conftest import TINY, model_cfg

SMALL = TINY + ["model.vocab_size=256"]
ON = "model.activation_checkpointing=true"
B, T = 8, 16  # TINY's context


def pair(overrides: list[str]) -> tuple[Transformer, Transformer]:
    """The same weights without and with activation checkpointing, in training mode."""
    torch.manual_seed(0)
    plain = Transformer(model_cfg(SMALL + overrides)).train()
    recomputed = Transformer(model_cfg(SMALL + overrides + [ON])).train()
    recomputed.load_state_dict(plain.state_dict())
    return plain, recomputed


def loss_and_grads(model: Transformer, batch: torch.Tensor):
    torch.manual_seed(1)  # the dropout masks
    ce, out = model.loss(batch[:, :-1], batch[:, 1:])
    loss = ce + sum(out.aux_losses.values())
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [
    ["model=tiny_llama", "model.dropout=0.1"],  # the default model; dropout: the RNG is restored
    ["model=tiny", "model.dropout=0.1"],  # GPT-2's: learned positions, LayerNorm, GELU
    ["model=tiny", "model/ffn=moe", "model.ffn.n_experts=4"],  # aux and z losses
])
def test_the_loss_and_gradients_equal_a_plain_pass(overrides):
    plain, recomputed = pair(overrides)
    batch = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(2))
    loss, grads = loss_and_grads(plain, batch)
    loss_r, grads_r = loss_and_grads(recomputed, batch)
    assert loss_r == loss
    assert grads_r.keys() == grads.keys() and len(grads) == len(list(plain.parameters()))
    for name, g in grads.items():  # the same operations on the same values: equal to fp32 rounding
        torch.testing.assert_close(grads_r[name], g, rtol=1e-6, atol=1e-8, msg=name)
    assert recomputed.state_dict().keys() == plain.state_dict().keys()  # checkpoints are the same


def held_bytes(model: Transformer, batch: torch.Tensor) -> int:
    """Bytes the blocks' forward pass leaves allocated: what autograd keeps for backward, plus
    the output."""
    out, kept = cpu_bytes_kept(lambda: model.features(batch))
    assert out.requires_grad
    return kept


def test_the_blocks_keep_only_their_inputs():
    plain, recomputed = pair(["model=tiny_llama", "model.n_layers=4", "model.d_model=64"])
    batch = torch.randint(0, 256, (B, T))
    one = B * T * 64 * 4  # one (B, T, C) fp32 activation
    kept, kept_r = held_bytes(plain, batch), held_bytes(recomputed, batch)
    # each block's input (4) and the output, with a little slack for small tensors (positions)
    assert kept_r <= 6 * one, (kept_r / one, kept / one)
    assert kept >= 5 * kept_r, (kept_r / one, kept / one)  # measured: ~14x


@pytest.mark.parametrize("early_stop", [True, False])
def test_moe_counts_each_token_once(early_stop):
    """Loss-free balancing counts the tokens sent to each expert in the forward pass; the
    recomputation in backward must not count them again: neither when it stops at the last
    tensor backward needs (torch's default, before the counting) nor when it runs whole."""
    plain, recomputed = pair(["model=tiny", "model/ffn=moe", "model.ffn.n_experts=4",
                              "model.ffn.bias_update_rate=0.001"])
    batch = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(3))
    with set_checkpoint_early_stop(early_stop):
        for model in (plain, recomputed):
            loss_and_grads(model, batch)
    for a, b in zip(plain.moe_layers(), recomputed.moe_layers(), strict=True):
        assert isinstance(b, MoE) and int(b.tokens_per_expert.sum()) == B * T * b.top_k
        torch.testing.assert_close(b.tokens_per_expert, a.tokens_per_expert, rtol=0, atol=0)


def test_generation_and_evaluation_run_plain():
    """Without gradients (generation, validation) nothing is checkpointed: the same tokens."""
    plain, recomputed = pair(["model=tiny_llama"])
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(4))
    tokens = [sample_tokens(m, prompt, 12, temperature=0) for m in (plain, recomputed)]
    assert torch.equal(tokens[0], tokens[1])
    assert recomputed.training  # generation put the model back in training mode


@pytest.mark.slow  # compiling takes ~40 s on 2 busy CPU cores
def test_compiled_checkpointed_blocks_equal_eager():
    """model.compile=true with activation checkpointing: the recomputation runs the compiled
    block again; the same loss, gradients and MoE counts as an eager plain pass, step after step."""
    moe = ["model=tiny", "model/ffn=moe", "model.ffn.n_experts=4"]
    plain, _ = pair(moe)
    compiled = Transformer(model_cfg(SMALL + moe + [ON, "model.compile=true"])).train()
    compiled.load_state_dict(plain.state_dict())
    batch = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(5))
    for step in range(2):  # the second step reuses the compiled forward and recomputation
        for m in (plain, compiled):
            m.zero_grad()
        loss, grads = loss_and_grads(plain, batch)
        loss_c, grads_c = loss_and_grads(compiled, batch)
        assert loss_c == pytest.approx(loss, rel=1e-5)  # fused kernels reorder fp32 arithmetic
        for name, g in grads.items():
            torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(plain.moe_layers(), compiled.moe_layers(), strict=True):
        assert int(b.tokens_per_expert.sum()) == 2 * B * T * b.top_k
        torch.testing.assert_close(b.tokens_per_expert, a.tokens_per_expert, rtol=0, atol=0)
