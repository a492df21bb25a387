"""Mixture-of-Experts feed-forward layer (Shazeer et al. 2017; Switch, GShard, Mixtral, DeepSeek-V3).

A router scores every token against ``n_experts`` experts and sends it to its ``top_k`` best; the
token's output is the weighted sum of those experts' outputs (plus optional shared experts that see
every token). Dispatch sorts the (token, expert) assignments by expert so that each expert runs one
matmul on a contiguous slice, and the weighted outputs are added back per token with ``index_add``.

Capacity (Switch, GShard): with a capacity factor ``cf`` an expert takes at most
``ceil(cf * N * top_k / E)`` of a forward pass's ``N`` tokens, so a token's output depends on the
tokens it is computed with. ``capacity_factor`` applies in training mode and ``eval_capacity_factor``
otherwise (evaluation, generation), as t5x/flaxformer's train and eval capacity factors; null is
dropless, the default for both, so held-out losses and generated tokens do not depend on the batch.

Balancing, each switched on by its coefficient:

- ``aux_loss_coef``: Switch/GShard load-balancing loss ``E * sum_e f_e * P_e`` per layer, with
  ``f_e`` the fraction of the layer's ``N * top_k`` assignments that went to expert ``e`` and ``P_e``
  the mean router probability of ``e``. It is 1 for a uniform router. (Hugging Face's Mixtral
  ``load_balancing_loss_func`` divides the counts by ``N`` instead of ``N * top_k``, so its value is
  ``top_k`` times ours, and it pools all layers' tokens into one loss where we sum per-layer losses.)
- ``z_loss_coef``: ST-MoE router z-loss, the mean squared log-sum-exp of the router logits.
- ``bias_update_rate``: DeepSeek-V3 auxiliary-loss-free balancing. A per-expert bias, added to the
  scores for *selection only* (never to the combine weights), is moved by ``rate * sign(mean - count)``
  after every optimizer step. The layer sums the token counts of its training forward passes in
  ``tokens_per_expert`` (all micro-batches of a step); LanguageModule calls :meth:`MoE.update_bias`
  after the optimizer step, which uses and resets them.

After each forward pass the layer holds its weighted losses in ``aux_losses`` (``moe_aux``,
``moe_z``; the Transformer sums them over layers) and detached statistics in ``routing``
(:class:`RoutingStats`), read by LanguageModule and the RoutingMonitor callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import check_choice
from lmlab.checks import is_int, is_number, non_negative, positive_int_or_null, require
from lmlab.model.ffn import DenseFFN, SwiGLU, swiglu_hidden
from lmlab.model.linear import Linear
from lmlab.model.recompute import recomputing

EXPERTS = ("gelu", "swiglu")
SCORES = ("softmax", "sigmoid")


@dataclass
class RoutingStats:
    """Detached routing statistics of a layer's latest forward pass."""

    load: torch.Tensor  # (E,) fraction of the token assignments per expert, sums to 1
    entropy: torch.Tensor  # () mean router entropy per token
    dropped: torch.Tensor  # () fraction of assignments dropped by the capacity limit
    aux: torch.Tensor  # () unweighted load-balancing loss, 1 for a uniform router
    z: torch.Tensor  # () unweighted router z-loss

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"entropy": self.entropy, "dropped": self.dropped, "aux": self.aux, "z": self.z}


class MoE(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_experts: int = 8,
        top_k: int = 2,
        expert: str = "gelu",
        hidden_dim: int | None = None,
        n_shared: int = 0,
        score: str = "softmax",
        renormalize: bool = True,
        capacity_factor: float | None = None,
        eval_capacity_factor: float | None = None,
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.0,
        bias_update_rate: float = 0.0,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_choice("model.ffn.expert", expert, EXPERTS)
        check_choice("model.ffn.score", score, SCORES)
        require(is_int(n_experts) and n_experts >= 1, "model.ffn.n_experts", n_experts,
                "an integer >= 1")
        require(is_int(n_shared) and n_shared >= 0, "model.ffn.n_shared", n_shared, "an integer >= 0")
        positive_int_or_null("model.ffn.hidden_dim", hidden_dim)
        for key, value in [("aux_loss_coef", aux_loss_coef), ("z_loss_coef", z_loss_coef),
                           ("bias_update_rate", bias_update_rate)]:
            non_negative(f"model.ffn.{key}", value)
        require(is_int(top_k), "model.ffn.top_k", top_k,  # torch.topk takes neither 1.5 nor true
                f"an integer between 1 and model.ffn.n_experts={n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(
                f"model.ffn.top_k: {top_k} must be between 1 and model.ffn.n_experts={n_experts}"
            )
        for key, cf in [("capacity_factor", capacity_factor),
                        ("eval_capacity_factor", eval_capacity_factor)]:
            if cf is not None and not (is_number(cf) and cf > 0):
                raise ValueError(f"model.ffn.{key}: {cf!r} must be positive or null (dropless)")
        self.n_experts, self.top_k = n_experts, top_k
        self.score, self.renormalize = score, renormalize
        self.capacity_factor = capacity_factor  # in training mode
        self.eval_capacity_factor = eval_capacity_factor  # in eval mode
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.bias_update_rate = bias_update_rate

        self.router = Linear(d_model, n_experts, bias=False)
        # DeepSeek-V3 selection bias: moved by update_bias(), never trained by gradients.
        self.register_buffer("expert_bias", torch.zeros(n_experts))

        if hidden_dim is None:
            hidden_dim = 4 * d_model if expert == "gelu" else swiglu_hidden(d_model)

        def make(hidden: int) -> nn.Module:
            if expert == "gelu":
                return DenseFFN(d_model, hidden_dim=hidden, bias=bias, dropout=dropout)
            return SwiGLU(d_model, hidden_dim=hidden, bias=bias, dropout=dropout)

        self.experts = nn.ModuleList(make(hidden_dim) for _ in range(n_experts))
        # n_shared always-on experts are one FFN n_shared times as wide (the same function).
        self.shared = make(n_shared * hidden_dim) if n_shared > 0 else None

        # State of the latest forward pass, and the token counts of the step so far. Plain
        # attributes, not buffers: they are per rank (DDP broadcasts buffers) and not checkpointed.
        self.aux_losses: dict[str, torch.Tensor] = {}  # weighted, named
        self.routing: RoutingStats | None = None
        self.tokens_per_expert: torch.Tensor | None = None  # (E,) summed over the step's batches

    # ---- routing -------------------------------------------------------------------------
    def route(self, x: torch.Tensor):
        """x (N, C) -> router logits (N, E), normalised scores (N, E), chosen experts (N, k) and
        their combine weights (N, k)."""
        logits = self.router(x).float()
        if self.score == "softmax":
            scores = logits.softmax(-1)
            probs = scores
        else:  # DeepSeek-V3: independent sigmoid affinities; normalised for the aux loss/entropy
            scores = logits.sigmoid()
            probs = scores / scores.sum(-1, keepdim=True)
        choice = (scores + self.expert_bias).topk(self.top_k, dim=-1).indices  # bias: selection only
        weights = scores.gather(-1, choice)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, probs, choice, weights

    def capacity(self, n_tokens: int) -> int | None:
        """The most assignments an expert takes of a pass over ``n_tokens`` tokens, by the capacity
        factor of the module's mode (training or eval); None: dropless."""
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        if cf is None:
            return None
        return math.ceil(cf * n_tokens * self.top_k / self.n_experts)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) -> y (..., C); keeps the losses, statistics and counts described above."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        N, E, k = x.shape[0], self.n_experts, self.top_k
        logits, probs, choice, weights = self.route(x)

        # Assignments in rank-major order (every token's first choice, then second choices...), so
        # that under a capacity limit first choices win over second ones, earlier tokens over later.
        expert = choice.t().reshape(-1)  # (k*N,)
        token = torch.arange(N, device=x.device).repeat(k)  # (k*N,)
        weight = weights.t().reshape(-1).to(x.dtype)  # (k*N,)
        order = torch.argsort(expert, stable=True)  # grouped by expert, priority kept within
        counts = torch.bincount(expert, minlength=E)  # (E,) what the router asked for

        kept_counts = counts
        cap = self.capacity(N)
        if cap is not None:
            starts = torch.cumsum(counts, 0) - counts  # first sorted slot of each expert
            rank = torch.arange(k * N, device=x.device) - starts[expert[order]]
            order = order[rank < cap]
            kept_counts = counts.clamp(max=cap)

        # Each expert runs on its contiguous slice of the sorted tokens.
        tok = token[order]
        xs = x[tok]  # (M, C), M = kept assignments
        sizes = kept_counts.tolist()
        # every expert runs, on an empty slice too: its parameters join the graph with zero
        # gradients, so DDP (static graph, no unused-parameter search) works when a rank idles one
        y = torch.cat([self.experts[e](part) for e, part in enumerate(xs.split(sizes))])
        out = torch.zeros_like(x).index_add_(0, tok, y * weight[order, None])
        if self.shared is not None:
            out = out + self.shared(x)

        self._record(logits, probs, counts, kept_counts)
        return out.reshape(shape)

    def _record(self, logits, probs, counts, kept_counts) -> None:
        """Keep this pass's weighted losses and detached statistics; in training, add its counts
        to the step's. logits, probs (N, E); counts, kept_counts (E,)."""
        N, E = logits.shape
        f = counts.float() / (N * self.top_k)  # fraction of assignments per expert, sums to 1
        aux = E * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).square().mean()
        self.aux_losses = {}
        if self.aux_loss_coef:
            self.aux_losses["moe_aux"] = self.aux_loss_coef * aux
        if self.z_loss_coef:
            self.aux_losses["moe_z"] = self.z_loss_coef * z
        entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
        dropped = 1 - kept_counts.sum() / (N * self.top_k)
        self.routing = RoutingStats(load=f.detach(), entropy=entropy.detach(),
                                    dropped=dropped.detach().float(), aux=aux.detach(), z=z.detach())
        if self.training and not recomputing():  # a checkpointed block's second pass: counted
            step = self.tokens_per_expert
            self.tokens_per_expert = counts.detach() if step is None else step + counts.detach()

    # ---- DeepSeek-V3 auxiliary-loss-free balancing ---------------------------------------
    @torch.no_grad()
    def update_bias(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Call after each optimizer step. Raises the selection bias of under-loaded experts and
        lowers it for over-loaded ones by ``bias_update_rate`` (DeepSeek-V3, section 2.1.2), from
        the token counts of the step, summed over ranks by ``reduce`` (for example Lightning's
        ``strategy.reduce(counts, reduce_op="sum")``; every rank must call it). The counts are
        then reset. Only resets them when the rate is 0."""
        counts, self.tokens_per_expert = self.tokens_per_expert, None
        if not self.bias_update_rate or counts is None:
            return
        counts = (reduce(counts) if reduce is not None else counts).float()
        self.expert_bias += self.bias_update_rate * torch.sign(counts.mean() - counts)

    def inactive_params(self) -> int:
        """Parameters a token does not use: the routed experts it is not sent to."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (self.n_experts - self.top_k) * per_expert
