"""What an lmlab model can be exported as: the Hugging Face layout its components match."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.model.attention import Attention
from lmlab.model.transformer import Transformer


def component_kinds(model: Transformer) -> dict[str, str]:
    """Name each component of ``model`` the way the refusal messages speak of it."""
    block = model.blocks[0]
    return {
        "position": type(model.position).__name__,
        "ffn": type(block.ffn).__name__,
        "norm": type(block.norm1).__name__,
    }


def end_of_text_id(model: Transformer) -> int | None:
    """The token Hugging Face's ``generate()`` stops at: ``<|endoftext|>`` of GPT-2's BPE (the
    default ``data.tokenizer``, where lmlab's sampling stops too), if the vocabulary holds it."""
    from lmlab.data.tokenizer import get_tokenizer

    eot = get_tokenizer("gpt2").eot_token
    return eot if model.cfg["vocab_size"] > eot else None


def guess_layout(model: Transformer) -> str:
    k = component_kinds(model)
    if k["position"] == "RoPE" or k["ffn"] == "SwiGLU" or k["norm"] == "RMSNorm":
        return "llama"
    return "gpt2"


def check_exportable(model: Transformer, layout: str, position: type, ffn: type, norm: type) -> None:
    block, k = model.blocks[0], component_kinds(model)

    def refuse(what: str, needs: str = "") -> None:
        raise ValueError(f"{what} has no Hugging Face {layout} equivalent{needs}; cannot export")

    for group, cls, built in (("position", position, model.position), ("ffn", ffn, block.ffn),
                              ("norm", norm, block.norm1)):
        if not isinstance(built, cls):  # which one the layout takes: the choice to train with
            refuse(f"{group} {k[group]}", f" ({layout} takes {group} {cls.__name__})")
    if block.post_norm:
        refuse("model.norm_placement=post")
    attn: Attention = block.attn
    if attn.window is not None:
        refuse(f"model.attention.window={attn.window} (sliding window)")
    if attn.q_norm is not None:
        refuse("model.attention.qk_norm=true")
    if layout == "gpt2" and attn.n_kv_heads != attn.n_heads:
        refuse(f"model.attention.n_kv_heads={attn.n_kv_heads} (grouped-query attention)")
    if layout == "llama" and model.position.scaling not in (None, "linear"):
        refuse(f"model.position.scaling={model.position.scaling}")


def bias_or_zeros(layer: nn.Module, n: int) -> torch.Tensor:
    """A layer's bias, or zeros where lmlab has none and Hugging Face always keeps one."""
    b = getattr(layer, "bias", None)
    return b.detach() if b is not None else torch.zeros(n, dtype=layer.weight.dtype)

