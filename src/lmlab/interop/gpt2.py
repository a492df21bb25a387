"""GPT-2 (``GPT2LMHeadModel``) weights and config to and from lmlab's.

GPT-2 stores q, k and v fused in one ``Conv1D`` (``c_attn``, weight (in, 3 * out)): lmlab keeps
separate ``Linear`` layers, whose weights are the transposed thirds."""

from __future__ import annotations

import torch

from lmlab.interop.exportable import bias_or_zeros, check_exportable, end_of_text_id
from lmlab.model.ffn import DenseFFN
from lmlab.model.norm import LayerNorm
from lmlab.model.position import Learned
from lmlab.model.transformer import Transformer

GPT2_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def gpt2_in(hf: dict, sd: dict) -> tuple[dict, dict]:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    if hf.get("scale_attn_weights", True) is False:
        raise ValueError("GPT-2 scale_attn_weights=false is not supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTS:
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported; valid choices: {', '.join(GPT2_ACTS)}")
    d, L = hf["n_embd"], hf["n_layer"]
    cfg = {
        "vocab_size": hf["vocab_size"], "context_length": hf["n_positions"], "n_layers": L,
        "n_heads": hf["n_head"], "d_model": d, "bias": True, "dropout": 0.0,
        "norm_placement": "pre", "tie_weights": hf.get("tie_word_embeddings", True),
        "attention": {"_target_": "lmlab.model.attention.Attention", "n_kv_heads": None,
                      "kernel": "auto", "qkv_bias": True, "qk_norm": False, "window": None},
        "position": {"_target_": "lmlab.model.position.Learned", "max_positions": None},
        "ffn": {"_target_": "lmlab.model.ffn.DenseFFN", "hidden_mult": 4.0,
                "hidden_dim": hf.get("n_inner"), "activation": GPT2_ACTS[act]},
        "norm": {"_target_": "lmlab.model.norm.LayerNorm", "eps": hf.get("layer_norm_epsilon", 1e-5)},
    }
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {
        "tok_emb.weight": sd["wte.weight"], "position.table.weight": sd["wpe.weight"],
        "norm.weight": sd["ln_f.weight"], "norm.bias": sd["ln_f.bias"],
    }
    out["lm_head.weight"] = sd["wte.weight"] if cfg["tie_weights"] else sd["lm_head.weight"]
    for i in range(L):
        h, b = f"h.{i}.", f"blocks.{i}."
        for src, dst in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[b + dst + ".weight"], out[b + dst + ".bias"] = sd[h + src + ".weight"], sd[h + src + ".bias"]
        w, bias = sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"]  # Conv1D: (d, 3d)
        for name, wi, bi in zip("qkv", w.split(d, dim=1), bias.split(d)):
            out[b + f"attn.{name}.weight"], out[b + f"attn.{name}.bias"] = wi.t().contiguous(), bi
        for src, dst in (("attn.c_proj", "attn.proj"), ("mlp.c_fc", "ffn.fc"), ("mlp.c_proj", "ffn.proj")):
            out[b + dst + ".weight"] = sd[h + src + ".weight"].t().contiguous()
            out[b + dst + ".bias"] = sd[h + src + ".bias"]
    return cfg, out


def gpt2_out(model: Transformer) -> tuple[dict, dict]:
    check_exportable(model, "gpt2", Learned, DenseFFN, LayerNorm)
    c, d = model.cfg, model.cfg["d_model"]
    act = {v: k for k, v in reversed(list(GPT2_ACTS.items()))}[model.blocks[0].ffn.act_name]
    tied = model.lm_head.weight is model.tok_emb.weight
    eot = end_of_text_id(model)  # GPT-2's configs give it as both
    hf = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c["vocab_size"],
        "n_positions": model.position.table.num_embeddings, "n_embd": d, "n_layer": len(model.blocks),
        "n_head": c["n_heads"], "n_inner": model.blocks[0].ffn.fc.out_features,
        "activation_function": act, "layer_norm_epsilon": model.norm.eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": tied,
        "bos_token_id": eot, "eos_token_id": eot,
    }
    sd = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.position.table.weight,
          "transformer.ln_f.weight": model.norm.weight, "transformer.ln_f.bias": bias_or_zeros(model.norm, d)}
    if not tied:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, blk in enumerate(model.blocks):
        h = f"transformer.h.{i}."
        for src, dst in (("ln_1", blk.norm1), ("ln_2", blk.norm2)):
            sd[h + src + ".weight"], sd[h + src + ".bias"] = dst.weight, bias_or_zeros(dst, d)
        a = blk.attn
        sd[h + "attn.c_attn.weight"] = torch.cat([a.q.weight.t(), a.k.weight.t(), a.v.weight.t()], dim=1)
        sd[h + "attn.c_attn.bias"] = torch.cat([bias_or_zeros(a.q, d), bias_or_zeros(a.k, d), bias_or_zeros(a.v, d)])
        for src, dst in (("attn.c_proj", a.proj), ("mlp.c_fc", blk.ffn.fc), ("mlp.c_proj", blk.ffn.proj)):
            sd[h + src + ".weight"], sd[h + src + ".bias"] = dst.weight.t(), bias_or_zeros(dst, dst.out_features)
    return hf, sd

