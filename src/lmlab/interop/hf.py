"""Hugging Face checkpoints in and out: GPT-2 (``GPT2LMHeadModel``) and Llama (``LlamaForCausalLM``).

A Hugging Face checkpoint directory holds ``config.json`` and ``model.safetensors`` (or sharded
``model-*.safetensors`` with an index). Importing reads them directly, without ``transformers``;
exporting writes the same two files, which ``transformers`` then loads with ``from_pretrained``.

- ``load_hf(path) -> (cfg, state_dict)``: the lmlab model config dict and an lmlab state dict;
- ``import_hf(path) -> Transformer``: the built model with those weights;
- ``export_hf(model, path, layout=None)``: write ``model`` as a GPT-2 or Llama checkpoint. The
  layout is guessed from the components when not given; a component with no Hugging Face
  equivalent in that layout (ALiBi, MoE, a sliding window, QK-norm, post-norm, ...) is refused
  with a one-line ValueError naming it.

GPT-2 stores q, k and v fused in one ``Conv1D`` (``c_attn``, weight (in, 3 * out)): lmlab keeps
separate ``Linear`` layers, whose weights are the transposed thirds. Llama's RoPE uses the
rotate-half layout, as lmlab does, so its q and k weights map one to one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lmlab.model.attention import Attention
from lmlab.model.ffn import DenseFFN, SwiGLU
from lmlab.model.norm import LayerNorm, RMSNorm
from lmlab.model.position import Learned, RoPE
from lmlab.model.transformer import Transformer

LAYOUTS = ("gpt2", "llama")
GPT2_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


# ---- reading ------------------------------------------------------------------------------------
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors weights (convert .bin checkpoints first)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_hf(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a Hugging Face GPT-2 or Llama checkpoint directory into (lmlab config, state dict)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json; expected a Hugging Face checkpoint directory")
    hf = json.loads((path / "config.json").read_text())
    kind = hf.get("model_type")
    if kind == "gpt2":
        return _gpt2_in(hf, _read_weights(path))
    if kind == "llama":
        return _llama_in(hf, _read_weights(path))
    raise ValueError(f"model_type {kind!r} is not supported; valid choices: gpt2, llama")


def import_hf(path: str | Path) -> Transformer:
    cfg, state = load_hf(path)
    model = Transformer(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _gpt2_in(hf: dict, sd: dict) -> tuple[dict, dict]:
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
                      "kernel": "sdpa", "qkv_bias": True, "qk_norm": False, "window": None},
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


def _rope_in(hf: dict) -> dict:
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


def _llama_in(hf: dict, sd: dict) -> tuple[dict, dict]:
    d, nh, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    if hf.get("head_dim") not in (None, d // nh):
        raise ValueError(f"Llama head_dim={hf['head_dim']} differs from hidden_size / heads = {d // nh}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act {hf['hidden_act']!r} is not supported; valid choices: silu")
    attn_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attn_bias != mlp_bias:
        raise ValueError("Llama attention_bias != mlp_bias is not supported (lmlab has one model.bias)")
    cfg = {
        "vocab_size": hf["vocab_size"], "context_length": hf["max_position_embeddings"], "n_layers": L,
        "n_heads": nh, "d_model": d, "bias": bool(attn_bias), "dropout": 0.0, "norm_placement": "pre",
        "tie_weights": hf.get("tie_word_embeddings", False),
        "attention": {"_target_": "lmlab.model.attention.Attention",
                      "n_kv_heads": hf.get("num_key_value_heads") or nh, "kernel": "sdpa",
                      "qkv_bias": None, "qk_norm": False, "window": None},
        "position": _rope_in(hf),
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
            for p in ("weight", "bias"):
                key = f"model.layers.{i}.{src}.{p}"
                if key in sd:
                    out[f"blocks.{i}.{dst}.{p}"] = sd[key]
    return cfg, out


# ---- writing ------------------------------------------------------------------------------------
def _kinds(model: Transformer) -> dict[str, str]:
    """Name each component of ``model`` the way the refusal messages speak of it."""
    block = model.blocks[0]
    return {
        "position": type(model.position).__name__,
        "ffn": type(block.ffn).__name__,
        "norm": type(block.norm1).__name__,
    }


def guess_layout(model: Transformer) -> str:
    k = _kinds(model)
    if k["position"] == "RoPE" or k["ffn"] == "SwiGLU" or k["norm"] == "RMSNorm":
        return "llama"
    return "gpt2"


def _check(model: Transformer, layout: str, position: type, ffn: type, norm: type) -> None:
    block, k = model.blocks[0], _kinds(model)

    def refuse(what: str) -> None:
        raise ValueError(f"{what} has no Hugging Face {layout} equivalent; cannot export")

    if not isinstance(model.position, position):
        refuse(f"position {k['position']}")
    if not isinstance(block.ffn, ffn):
        refuse(f"ffn {k['ffn']}")
    if not isinstance(block.norm1, norm):
        refuse(f"norm {k['norm']}")
    if block.post_norm:
        refuse("model.norm_placement=post")
    attn: Attention = block.attn
    if attn.window is not None:
        refuse(f"attention.window={attn.window} (sliding window)")
    if attn.q_norm is not None:
        refuse("attention.qk_norm=true")
    if layout == "gpt2" and attn.n_kv_heads != attn.n_heads:
        refuse(f"attention.n_kv_heads={attn.n_kv_heads} (grouped-query attention)")
    if layout == "llama" and model.position.scaling not in (None, "linear"):
        refuse(f"rope.scaling={model.position.scaling}")


def _bias(layer: nn.Module, n: int) -> torch.Tensor:
    """A layer's bias, or zeros where lmlab has none and Hugging Face always keeps one."""
    b = getattr(layer, "bias", None)
    return b.detach() if b is not None else torch.zeros(n, dtype=layer.weight.dtype)


def _gpt2_out(model: Transformer) -> tuple[dict, dict]:
    _check(model, "gpt2", Learned, DenseFFN, LayerNorm)
    c, d = model.cfg, model.cfg["d_model"]
    act = {v: k for k, v in reversed(list(GPT2_ACTS.items()))}[model.blocks[0].ffn.act_name]
    tied = model.lm_head.weight is model.tok_emb.weight
    hf = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c["vocab_size"],
        "n_positions": model.position.table.num_embeddings, "n_embd": d, "n_layer": len(model.blocks),
        "n_head": c["n_heads"], "n_inner": model.blocks[0].ffn.fc.out_features,
        "activation_function": act, "layer_norm_epsilon": model.norm.eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": tied,
        "bos_token_id": c["vocab_size"] - 1, "eos_token_id": c["vocab_size"] - 1,
    }
    sd = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.position.table.weight,
          "transformer.ln_f.weight": model.norm.weight, "transformer.ln_f.bias": _bias(model.norm, d)}
    if not tied:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, blk in enumerate(model.blocks):
        h = f"transformer.h.{i}."
        for src, dst in (("ln_1", blk.norm1), ("ln_2", blk.norm2)):
            sd[h + src + ".weight"], sd[h + src + ".bias"] = dst.weight, _bias(dst, d)
        a = blk.attn
        sd[h + "attn.c_attn.weight"] = torch.cat([a.q.weight.t(), a.k.weight.t(), a.v.weight.t()], dim=1)
        sd[h + "attn.c_attn.bias"] = torch.cat([_bias(a.q, d), _bias(a.k, d), _bias(a.v, d)])
        for src, dst in (("attn.c_proj", a.proj), ("mlp.c_fc", blk.ffn.fc), ("mlp.c_proj", blk.ffn.proj)):
            sd[h + src + ".weight"], sd[h + src + ".bias"] = dst.weight.t(), _bias(dst, dst.out_features)
    return hf, sd


def _llama_out(model: Transformer) -> tuple[dict, dict]:
    _check(model, "llama", RoPE, SwiGLU, RMSNorm)
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
        "bos_token_id": None, "eos_token_id": None,
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
                sd[p + name + ".bias"] = _bias(layer, layer.out_features)
            elif name.startswith("mlp") and layer.bias is not None:
                sd[p + name + ".bias"] = layer.bias
    return hf, sd


def export_hf(model: Transformer, path: str | Path, layout: str | None = None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory (config.json, model.safetensors)."""
    from safetensors.torch import save_file

    layout = layout or guess_layout(model)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown {layout!r}; valid choices: {', '.join(LAYOUTS)}")
    hf, sd = (_gpt2_out if layout == "gpt2" else _llama_out)(model)
    dtype = model.tok_emb.weight.dtype
    hf["dtype"] = hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    save_file({k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()},
              str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


# ---- lmlab checkpoints ----------------------------------------------------------------------------
def save_checkpoint(model: Transformer, path: str | Path, **module_kwargs) -> Path:
    """Save ``model`` as a checkpoint that ``LanguageModule.load_from_checkpoint`` (and
    ``python train.py ckpt_path=...`` for its weights) reads, like those train.py writes."""
    import lightning

    from lmlab.module import LanguageModule

    module = LanguageModule(model=model.cfg, **module_kwargs)
    module.model.load_state_dict(model.state_dict())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def load_checkpoint(path: str | Path) -> Transformer:
    """The Transformer of an lmlab (Lightning) checkpoint, on the CPU."""
    from lmlab.checkpoint import load_module

    return load_module(path, "cpu").model
