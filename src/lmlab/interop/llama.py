"""Llama (``LlamaForCausalLM``) weights and config to and from lmlab's. Llama's RoPE uses the
rotate-half layout, as lmlab does, so its q and k weights map one to one."""

from __future__ import annotations

from lmlab.interop.exportable import bias_or_zeros, check_exportable, end_of_text_id
from lmlab.model.ffn import SwiGLU
from lmlab.model.norm import RMSNorm
from lmlab.model.position import RoPE
from lmlab.model.transformer import Transformer


def rope_in(hf: dict) -> dict:
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    rope = {"_target_": "lmlab.model.position.RoPE", "base": float(theta), "scaling": None,
            "factor": 1.0, "original_context": None}
    if kind == "linear":
        rope.update(scaling="linear", factor=float(params["factor"]))
    elif kind != "default":
        raise ValueError(f"Llama rope_type {kind!r} is not supported; valid choices: default, linear")
    return rope


def llama_in(hf: dict, sd: dict) -> tuple[dict, dict]:
    d, nh, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    if hf.get("head_dim") not in (None, d // nh):
        raise ValueError(f"Llama head_dim={hf['head_dim']} differs from hidden_size / heads = {d // nh}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act {hf['hidden_act']!r} is not supported; valid choices: silu")
    bias, qkv_bias = biases_in(hf, sd, L)
    cfg = {
        "vocab_size": hf["vocab_size"], "context_length": hf["max_position_embeddings"], "n_layers": L,
        "n_heads": nh, "d_model": d, "bias": bias, "dropout": 0.0, "norm_placement": "pre",
        "tie_weights": hf.get("tie_word_embeddings", False),
        "attention": {"_target_": "lmlab.model.attention.Attention",
                      "n_kv_heads": hf.get("num_key_value_heads") or nh, "kernel": "auto",
                      "qkv_bias": qkv_bias, "qk_norm": False, "window": None},
        "position": rope_in(hf),
        "ffn": {"_target_": "lmlab.model.ffn.SwiGLU", "hidden_dim": hf["intermediate_size"],
                "multiple_of": 64},
        "norm": {"_target_": "lmlab.model.norm.RMSNorm", "eps": hf.get("rms_norm_eps", 1e-6)},
    }
    names = {
        "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
        "self_attn.o_proj": "attn.proj", "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up",
        "mlp.down_proj": "ffn.down", "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
    }
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    out["lm_head.weight"] = sd["model.embed_tokens.weight"] if cfg["tie_weights"] else sd["lm_head.weight"]
    for i in range(L):
        for src, dst in names.items():
            weight = out[f"blocks.{i}.{dst}.weight"] = sd[f"model.layers.{i}.{src}.weight"]
            has_bias = bias or (qkv_bias and dst in ("attn.q", "attn.k", "attn.v"))
            if has_bias and not dst.startswith("norm"):  # a bias Llama lacks is zero: the same function
                out[f"blocks.{i}.{dst}.bias"] = sd.get(f"model.layers.{i}.{src}.bias", weight.new_zeros(len(weight)))
    return cfg, out


def biases_in(hf: dict, sd: dict, L: int) -> tuple[bool, bool | None]:
    """lmlab's (model.bias, model.attention.qkv_bias) for Llama's attention_bias and mlp_bias:
    both or neither as model.bias; biases on q, k and v alone (o_proj's all zero, as lmlab's
    export of qkv_bias=true writes them) as qkv_bias=true; another mix as model.bias, the biases
    Llama lacks set to zero."""
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    o_zero = all(not sd[f"model.layers.{i}.self_attn.o_proj.bias"].any() for i in range(L)) if attn_bias else False
    if attn_bias and not mlp_bias and o_zero:
        return False, True
    return attn_bias or mlp_bias, None


def llama_out(model: Transformer) -> tuple[dict, dict]:
    check_exportable(model, "llama", RoPE, SwiGLU, RMSNorm)
    c, blk0 = model.cfg, model.blocks[0]
    a, f = blk0.attn, blk0.ffn
    if (f.gate.bias is None) != (f.up.bias is None) or (f.gate.bias is None) != (f.down.bias is None):
        raise ValueError("ffn with biases on some projections only has no Hugging Face llama equivalent")
    attn_bias = any(l.bias is not None for l in (a.q, a.k, a.v, a.proj))
    tied = model.lm_head.weight is model.tok_emb.weight
    rope = {"rope_type": "default", "rope_theta": model.position.base}
    if model.position.pos_scale != 1.0:
        rope.update(rope_type="linear", factor=model.position.pos_scale)
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c["vocab_size"],
        "hidden_size": c["d_model"], "intermediate_size": f.gate.out_features,
        "num_hidden_layers": len(model.blocks), "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim, "hidden_act": "silu",
        "max_position_embeddings": c["context_length"], "rms_norm_eps": model.norm.eps,
        "rope_parameters": rope, "rope_theta": rope["rope_theta"],
        "rope_scaling": None if rope["rope_type"] == "default" else rope,
        "attention_bias": attn_bias, "mlp_bias": f.gate.bias is not None,
        "tie_word_embeddings": tied, "attention_dropout": 0.0,
        "bos_token_id": None, "eos_token_id": end_of_text_id(model),
    }
    sd = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    if not tied:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, blk in enumerate(model.blocks):
        p = f"model.layers.{i}."
        layers = {"self_attn.q_proj": blk.attn.q, "self_attn.k_proj": blk.attn.k,
                  "self_attn.v_proj": blk.attn.v, "self_attn.o_proj": blk.attn.proj,
                  "mlp.gate_proj": blk.ffn.gate, "mlp.up_proj": blk.ffn.up, "mlp.down_proj": blk.ffn.down,
                  "input_layernorm": blk.norm1, "post_attention_layernorm": blk.norm2}
        for name, layer in layers.items():
            sd[p + name + ".weight"] = layer.weight
            if name.startswith("self_attn") and attn_bias:
                sd[p + name + ".bias"] = bias_or_zeros(layer, layer.out_features)
            elif name.startswith("mlp") and layer.bias is not None:
                sd[p + name + ".bias"] = layer.bias
    return hf, sd

