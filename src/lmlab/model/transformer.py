"""The decoder-only transformer, assembled from one config of plain values.

The config holds sizes plus one sub-config per component group (attention, position, ffn, norm),
each with a ``_target_`` naming the class to build; Hydra's config groups are the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from lmlab.errors import check_choice
from lmlab.kv_cache import KVCache
from lmlab.model.head_loss import linear_cross_entropy
from lmlab.checks import is_number, require
from lmlab.model.half_copy import HALF_ROWS, HalfCopy
from lmlab.model.linear import Linear, linear
from lmlab.model.moe import MoE
from lmlab.model.recompute import checkpointed


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None from loss(), which never holds them
    # named, weighted auxiliary losses (MoE balancing), each summed over layers
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


def build(spec: dict, **dims):
    """Instantiate a component sub-config, passing the model's dimensions to its constructor.
    A ValueError raised by the component's constructor (a bad combination of values) is raised
    as itself, not wrapped in Hydra's multi-line InstantiationException."""
    spec = dict(spec)
    try:
        return instantiate(spec, **{k: v for k, v in dims.items() if k not in spec})
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


NORM_PLACEMENTS = ("pre", "post")


class Block(nn.Module):
    """Pre-norm block (default): x + attn(norm1(x)), then x + ffn(norm2(x)).
    Post-norm block (Vaswani et al. 2017, GPT-1, BERT): norm1(x + attn(x)), then norm2(x + ffn(x))."""

    def __init__(self, cfg: dict, dims: dict):
        super().__init__()
        self.post_norm = cfg.get("norm_placement", "pre") == "post"
        self.norm1 = build(cfg["norm"], d_model=dims["d_model"])
        self.attn = build(
            cfg["attention"], d_model=dims["d_model"], n_heads=dims["n_heads"],
            bias=dims["bias"], dropout=dims["dropout"],
        )
        self.norm2 = build(cfg["norm"], d_model=dims["d_model"])
        self.ffn = build(cfg["ffn"], d_model=dims["d_model"], bias=dims["bias"], dropout=dims["dropout"])

    def forward(self, x, position, pos, cache=None, real=None):
        if self.post_norm:
            x = self.norm1(x + self.attn(x, position, pos, cache, real))
            return self.norm2(x + self.ffn(x))
        x = x + self.attn(self.norm1(x), position, pos, cache, real)
        return x + self.ffn(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        cfg = dict(cfg)
        self.cfg = cfg
        d, nh = cfg["d_model"], cfg["n_heads"]
        if nh < 1 or d % nh:  # here, where head_dim is derived for the position and attention
            raise ValueError(f"model.d_model={d} is not divisible by model.n_heads={nh}")
        dropout = cfg.get("dropout", 0.0)
        require(is_number(dropout) and 0 <= dropout < 1, "model.dropout", dropout, "in [0, 1)")
        placement = cfg.get("norm_placement", "pre")
        check_choice("model.norm_placement", placement, NORM_PLACEMENTS)
        dims = {
            "d_model": d, "n_heads": nh, "head_dim": d // nh,
            "context_length": cfg["context_length"], "bias": cfg.get("bias", True),
            "dropout": dropout,
        }
        self.context_length = cfg["context_length"]
        self.tok_emb = nn.Embedding(cfg["vocab_size"], d)
        self.position = build(cfg["position"], **dims)
        self.drop = nn.Dropout(dims["dropout"])
        self.blocks = nn.ModuleList(Block(cfg, dims) for _ in range(cfg["n_layers"]))
        # post-norm blocks end normalised already; pre-norm needs a final norm before the head
        self.norm = build(cfg["norm"], d_model=d) if placement == "pre" else nn.Identity()
        self.lm_head = Linear(d, cfg["vocab_size"], bias=False)
        if cfg.get("tie_weights", False):
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # model.compile: each block compiled on its own (identical blocks share one compilation),
        # kept outside the module tree so the state dict, and so checkpoints, are the same with
        # or without it; a decoding step (one new token per row) is compiled whole, over a static
        # KV cache (kv_cache.py), so that one compilation serves every step
        self._compiled = [torch.compile(b) for b in self.blocks] if cfg.get("compile") else None
        self._compiled_step = torch.compile(self.decoding_step, dynamic=False) if cfg.get("compile") else None
        self._half: HalfCopy | None = None  # made on the first compiled decoding step that reads it
        self.activation_checkpointing = bool(cfg.get("activation_checkpointing", False))  # recompute.py
        self.fp16_decoding = True  # False: compiled decoding reads the fp32 weights (see half_copy)

    def _init_weights(self, m: nn.Module):
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers)."""
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * len(self.blocks)) if getattr(m, "residual_out", False) else 0.02
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pad: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> ModelOutput:
        """idx (B, T) token ids -> logits (B, T, vocab), or (B, 1, vocab) for the last position
        only with ``last_only``. With a ``cache``, keys and values are kept for the next call and
        positions continue after them. ``pad`` (B, T): True at left-padding tokens (a batch of
        prompts of different lengths): they take no position and no token attends to them."""
        x, pos, real = self.embed(idx, cache, pad)
        if self.compiled_decoding and cache is not None and cache.static and idx.shape[1] == 1:
            logits = self._compiled_step(x, pos, cache, self.half_copy(len(idx)))  # (B, 1, vocab)
        else:
            x = self.run_blocks(x, pos, cache, real)
            logits = self.lm_head(self.norm(x[:, -1:] if last_only else x))  # (B, T | 1, vocab)
        return ModelOutput(logits, self.aux_losses())

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> the last block's output (B, T, C), before the final norm (see loss)."""
        return self.run_blocks(*self.embed(idx))

    def embed(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None):
        """idx (B, T) -> (the blocks' input (B, T, C), positions (T,) or (B, T), ``real`` (B, T):
        False at padding, or None). With a cache, the tokens' slots are claimed in it."""
        B, T = idx.shape
        real = None
        if cache is not None:
            pos = cache.positions(B, T, pad, idx.device)  # (T,) or (B, T)
        elif pad is not None:
            real = ~pad
            pos = (real.cumsum(1) - 1).clamp(min=0)  # (B, T)
        else:
            pos = torch.arange(T, device=idx.device)  # (T,)
        # shared positions end at the filled slots (no device sync); per-row ones at their maximum
        end = int(pos.max()) + 1 if pos.dim() == 2 else (len(cache) if cache is not None else 0) + T
        self.position.check_positions(end)
        if cache is not None:
            cache.claim(B, pos, pad)
        return self.drop(self.position.embed(self.tok_emb(idx), pos)), pos, real  # (B, T, C)

    def run_blocks(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None,
                   real: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) at ``pos`` through every block (compiled ones, with model.compile, unless
        decoding or padded; checkpointed ones, with model.activation_checkpointing, in training
        with gradients) -> (B, T, C)."""
        compiled = self._compiled and cache is None and real is None
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self._compiled if compiled else self.blocks):
            layer = cache.layers[i] if cache is not None else None
            if recompute:
                x = checkpointed(block, x, self.position, pos, layer, real)
            else:
                x = block(x, self.position, pos, layer, real)
        return x

    def decoding_step(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache,
                      half: HalfCopy | None = None) -> torch.Tensor:
        """One new token per row: x (B, 1, C) at ``pos`` through the blocks with their static
        cache, the final norm and the head -> logits (B, 1, vocab); with ``half``, through its
        fp16 copies of the blocks and the head. Compiled with model.compile."""
        blocks = self.blocks if half is None else half.blocks
        for i, block in enumerate(blocks):
            x = block(x, self.position, pos, cache.layers[i])
        return linear(self.norm(x), self.lm_head.weight if half is None else half.head)

    def half_copy(self, rows: int) -> HalfCopy | None:
        """The fp16 copies a compiled decoding step of ``rows`` rows reads (``half_copy.py``),
        brought up to date, or None for the fp32 weights: with ``fp16_decoding`` off, off CPU,
        past HALF_ROWS rows, under autocast, with gradients enabled (they must reach the model's
        own weights), in training mode (the copies are in eval mode: no dropout), with MoE layers
        (their routing statistics live on the model's own layers), or while a weight is past
        fp16's range."""
        w = self.lm_head.weight
        if (not self.fp16_decoding or w.device.type != "cpu" or w.dtype != torch.float32
                or rows > HALF_ROWS or self.training or torch.is_autocast_enabled("cpu")
                or torch.is_grad_enabled() or self.moe_layers()):
            return None
        if self._half is None:
            self._half = HalfCopy(self)
        return self._half if self._half.refresh() else None

    @property
    def compiled_decoding(self) -> bool:
        """Whether decoding steps run compiled (model.compile), which needs a static KV cache."""
        return self._compiled_step is not None

    # ---- mixture-of-experts layers -------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        """The blocks' MoE layers, first block first; empty for a dense model."""
        return [block.ffn for block in self.blocks if isinstance(block.ffn, MoE)]

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """The weighted auxiliary losses of the latest forward pass by name, summed over layers."""
        losses: dict[str, torch.Tensor] = {}
        for layer in self.moe_layers():
            for name, value in layer.aux_losses.items():
                losses[name] = losses[name] + value if name in losses else value
        return losses

    # ---- reports -------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameters, counting a tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def active_params(self) -> int:
        """Parameters used for one token: all of them, less the routed experts it is not sent to."""
        return self.num_params() - sum(layer.inactive_params() for layer in self.moe_layers())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * T * d (Kaplan et al. 2020,
        PaLM appendix B), with N the parameters used in matmuls: embedding tables that are only
        looked up are left out, a tied LM head is counted, and for MoE only the active experts."""
        lookups = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        if self.lm_head.weight is self.tok_emb.weight:
            lookups -= self.tok_emb.weight.numel()
        n = self.active_params() - lookups
        return 6 * n + 12 * len(self.blocks) * self.context_length * self.cfg["d_model"]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ModelOutput]:
        """idx, targets (B, T) -> (mean cross-entropy, the output with its ``aux_losses`` and no
        logits): the LM head and the loss run as one function that never holds fp32 logits
        (``head_loss.py``), equal to ``F.cross_entropy`` on ``forward``'s logits."""
        x = self.norm(self.features(idx))  # (B, T, C)
        return linear_cross_entropy(x, self.lm_head.weight, targets), ModelOutput(None, self.aux_losses())
