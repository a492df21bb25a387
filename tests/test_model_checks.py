"""Each component refuses its own bad config values in its constructor (lmlab.checks), so
validate.py's meta-device build names the key before training: these once trained to a NaN,
crashed in the first step, or were silently taken for something else (n_kv_heads=0 for MHA,
hidden_dim=0 for the default width, qkv_bias=maybe for true)."""

from __future__ import annotations

import pytest
import torch

from lmlab.model.transformer import Transformer
from tests.conftest import TINY, model_cfg


@pytest.mark.parametrize("overrides, message", [
    (["model.norm.eps=-1"], "model.norm.eps=-1: must be a number > 0"),
    (["model/norm=layernorm", "model.norm.eps=0"], "model.norm.eps=0: must be a number > 0"),
    (["model.position.base=0"], "model.position.base=0: must be a number > 0"),
    (["model/position=sinusoidal", "model.position.base=-5"], "model.position.base=-5: must be a number > 0"),
    (["model.position.scaling=linear", "model.position.factor=0"], "model.position.factor=0: must be a number > 0"),
    (["model.position.scaling=yarn", "model.position.factor=2", "model.position.original_context=0"],
     "model.position.original_context=0: must be an integer >= 1 or null"),
    (["model/position=learned", "model.position.max_positions=0"],
     "model.position.max_positions=0: must be an integer >= 1 or null"),
    (["model.attention.qkv_bias=maybe"], "model.attention.qkv_bias='maybe': must be true, false or null (null: model.bias)"),
    (["model/attention=gqa", "model.attention.n_kv_heads=0"],
     "model.attention.n_kv_heads=0: must be an integer >= 1 or null"),
    (["model.ffn.hidden_dim=0"], "model.ffn.hidden_dim=0: must be an integer >= 1 or null"),
    (["model.ffn.multiple_of=0"], "model.ffn.multiple_of=0: must be an integer >= 1"),
    (["model/ffn=dense", "model.ffn.hidden_mult=0"], "model.ffn.hidden_mult=0: must be a number > 0"),
    (["model.dropout=1.5"], "model.dropout=1.5: must be in [0, 1)"),
    (["model/ffn=moe", "model.ffn.n_experts=0"], "model.ffn.n_experts=0: must be an integer >= 1"),
    (["model/ffn=moe", "model.ffn.n_shared=-1"], "model.ffn.n_shared=-1: must be an integer >= 0"),
    (["model/ffn=moe", "model.ffn.z_loss_coef=-1"], "model.ffn.z_loss_coef=-1: must be a number >= 0"),
    # these two built: top_k=1.5 failed in the first step (topk), capacity_factor=abc was a TypeError
    (["model/ffn=moe", "model.ffn.top_k=1.5"],
     "model.ffn.top_k=1.5: must be an integer between 1 and model.ffn.n_experts=8"),
    (["model/ffn=moe", "model.ffn.capacity_factor=abc"],
     "model.ffn.capacity_factor: 'abc' must be positive or null (dropless)"),
    (["model/ffn=moe", "model.ffn.eval_capacity_factor=true"],
     "model.ffn.eval_capacity_factor: True must be positive or null (dropless)"),
])
def test_a_bad_component_value_is_named_by_its_constructor(overrides, message):
    with torch.device("meta"), pytest.raises(ValueError) as err:
        Transformer(model_cfg([*TINY, *overrides]))
    assert str(err.value) == message


def test_the_edges_that_are_allowed_build():
    for overrides in (["model.attention.qkv_bias=null"], ["model.dropout=0.0"],
                      ["model/ffn=moe", "model.ffn.aux_loss_coef=0", "model.ffn.hidden_dim=null"],
                      ["model/ffn=moe", "model.ffn.capacity_factor=0.5", "model.ffn.eval_capacity_factor=2"]):
        with torch.device("meta"):
            Transformer(model_cfg([*TINY, *overrides]))
