"""Every option of every model config group composes through Hydra, builds and trains a step;
bad combinations are refused at build time with one line naming the values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.kv_cache import KVCache
from lmlab.model import Transformer
from tests.conftest import CONF, ROOT, TINY, model_cfg

GROUPS = ("attention", "position", "ffn", "norm")
SMALL = TINY + ["model.vocab_size=256"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / "model" / group).glob("*.yaml"))


EVERY_OPTION = [f"model/{g}={o}" for g in GROUPS for o in options(g)]
EXTRA = [
    ["model.attention.qk_norm=true"],
    ["model.attention.window=4"],
    ["model.attention.window=4", "model.attention.kernel=manual", "model/position=alibi"],
    ["model.attention.kernel=manual"],
    ["model.norm_placement=post"],
    ["model/position=rope", "model.position.scaling=linear", "model.position.factor=2"],
    ["model/position=rope", "model.position.scaling=ntk", "model.position.factor=2"],
    ["model/position=rope", "model.position.scaling=yarn", "model.position.factor=4"],
    ["model/position=learned", "model.position.max_positions=32"],
    ["model=llama", "model/position=alibi"],
    ["model=llama", "model/attention=mqa", "model.attention.qk_norm=true", "model.attention.window=3"],
]


def train_step(model: Transformer):
    idx = torch.randint(0, model.cfg["vocab_size"], (2, model.context_length + 1),
                        generator=torch.Generator().manual_seed(0))
    ce, out = model.loss(idx[:, :-1], idx[:, 1:])
    loss = ce + sum(out.aux_losses.values())
    loss.backward()
    return loss


def test_the_groups_have_their_options():
    assert {"mha", "gqa", "mqa"} <= set(options("attention"))
    assert {"none", "learned", "sinusoidal", "rope", "alibi"} <= set(options("position"))
    assert {"dense", "swiglu"} <= set(options("ffn"))
    assert {"layernorm", "rmsnorm"} <= set(options("norm"))


@pytest.mark.parametrize("preset", ["tiny", "llama"])
@pytest.mark.parametrize("option", EVERY_OPTION)
def test_every_option_composes_builds_and_trains(preset, option):
    group, name = option.removeprefix("model/").split("=")
    cfg = model_cfg([f"model={preset}", option] + SMALL)
    chosen = OmegaConf.load(Path(CONF) / "model" / group / f"{name}.yaml")
    assert cfg[group]["_target_"] == chosen["_target_"]  # the override took, whatever the preset
    torch.manual_seed(0)
    model = Transformer(cfg)
    loss = train_step(model)
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if "expert" not in pname:  # an MoE expert may legitimately receive no token
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("overrides", EXTRA, ids=lambda o: " ".join(o))
def test_attention_and_block_options_train(overrides):
    torch.manual_seed(0)
    model = Transformer(model_cfg(overrides + SMALL))
    loss = train_step(model)
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_group_override_replaces_the_preset_component():
    cfg = model_cfg(["model=llama", "model/position=alibi"])
    assert cfg["position"]["_target_"] == "lmlab.model.position.ALiBi"
    assert cfg["ffn"]["_target_"] == "lmlab.model.ffn.SwiGLU"  # the rest of llama stays


def test_llama_preset_is_gqa_rope_swiglu_rmsnorm_without_biases_untied():
    with torch.device("meta"):
        m = Transformer(model_cfg(["model=llama"]))
    blk = m.blocks[0]
    assert type(blk.attn).__name__ == "Attention" and blk.attn.n_kv_heads < blk.attn.n_heads
    assert type(m.position).__name__ == "RoPE"
    assert type(blk.ffn).__name__ == "SwiGLU"
    assert type(blk.norm1).__name__ == type(m.norm).__name__ == "RMSNorm"
    assert all(mod.bias is None for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    assert m.lm_head.weight is not m.tok_emb.weight


def test_post_norm_blocks_end_normalised_and_differ_from_pre_norm():
    torch.manual_seed(0)
    pre = Transformer(model_cfg(SMALL + ["model=tiny"]))  # LayerNorm
    post = Transformer(model_cfg(SMALL + ["model=tiny", "model.norm_placement=post"]))
    post.load_state_dict(pre.state_dict(), strict=False)  # post has no final norm
    assert isinstance(post.norm, torch.nn.Identity)
    x = torch.randn(2, 8, 32)
    pos = torch.arange(8)
    y = post.blocks[0](x, post.position, pos)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)  # LayerNorm, w=1 b=0
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)
    y_pre = pre.blocks[0](x, pre.position, pos)
    assert not torch.allclose(y, y_pre)


BAD = [
    (["model=llama", "model.attention.n_kv_heads=3"], "model.n_heads=4 is not divisible by model.attention.n_kv_heads=3"),
    (["model.d_model=30"], "model.d_model=30 is not divisible by model.n_heads=4"),
    (["model/position=rope", "model.d_model=20"], "position=rope needs an even head size, got head_dim=5"),
    (["model/position=learned", "model.position.max_positions=8"], "position.max_positions=8 is shorter than model.context_length=16"),
    (["model.norm_placement=middle"], "model.norm_placement: unknown 'middle'; valid choices: pre, post"),
    (["model.attention.window=0"], "model.attention.window=0: must be an integer >= 1 or null"),
    (["model.attention.window=true"], "model.attention.window=True: must be an integer >= 1 or null"),
    (["model.attention.kernel=flash"], "attention.kernel: unknown 'flash'; valid choices: auto, sdpa, manual"),
    (["model/position=rope", "model.position.scaling=xpos"], "model.position.scaling: unknown 'xpos'; valid choices: null, linear, ntk, yarn"),
    (["model/ffn=dense", "model.ffn.activation=tanh"], "ffn.activation: unknown 'tanh'"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ValueError) as err:
        Transformer(model_cfg(SMALL + overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_learned_positions_refuse_inputs_past_the_table():
    model = Transformer(model_cfg(SMALL + ["model/position=learned"]))
    with pytest.raises(ValueError, match="17 positions are more than the learned position table's 16 rows"):
        model(torch.zeros(1, 17, dtype=torch.long))
    caches = KVCache.for_model(model, 32)
    model(torch.zeros(1, 16, dtype=torch.long), caches)  # a full context is fine
    with pytest.raises(ValueError, match="17 positions"):
        model(torch.zeros(1, 1, dtype=torch.long), caches)  # one more decoding step is not
    rope = Transformer(model_cfg(SMALL + ["model/position=rope"]))
    assert rope(torch.zeros(1, 20, dtype=torch.long)).logits.shape == (1, 20, 256)  # extrapolates


def test_train_cli_reports_a_bad_combination_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "model=llama", "model.attention.n_kv_heads=3",
         "logger=csv", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if "lmlab: error" in l]
    assert lines == ["lmlab: error: model.n_heads=4 is not divisible by model.attention.n_kv_heads=3"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_position_interface_is_not_a_choice_and_nope_is_no_position():
    from lmlab.model.position import NoPosition, Position

    with pytest.raises(TypeError, match="NoPosition"):
        Position()
    model = Transformer(model_cfg(SMALL + ["model/position=none"]))
    assert type(model.position) is NoPosition
    x, pos = torch.randn(1, 3, 32), torch.arange(3)
    assert model.position.embed(x, pos) is x and model.position.bias(pos, pos) is None
