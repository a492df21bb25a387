"""Mixture-of-Experts feed-forward layer (Shazeer et al. 2017; Switch, GShard, Mixtral, DeepSeek-V3).

A router scores every token against ``n_experts`` experts and sends it to its ``top_k`` best; the
token's output is the weighted sum of those experts' outputs (plus optional shared experts that see
every token). Dispatch sorts the (token, expert) assignments by expert so that each expert runs one
matmul on a contiguous slice, and the weighted outputs are added back per token with ``index_add``.

Balancing, each switched on by its coefficient:

- ``aux_loss_coef``: Switch/GShard load-balancing loss ``E * sum_e f_e * P_e`` per layer, with
  ``f_e`` the fraction of the layer's ``N * top_k`` assignments that went to expert ``e`` and ``P_e``
  the mean router probability of ``e``. It is 1 for a uniform router. (Hugging Face's Mixtral
  ``load_balancing_loss_func`` divides the counts by ``N`` instead of ``N * top_k``, so its value is
  ``top_k`` times ours, and it pools all layers' tokens into one loss where we sum per-layer losses.)
- ``z_loss_coef``: ST-MoE router z-loss, the mean squared log-sum-exp of the router logits.
- ``bias_update_rate``: DeepSeek-V3 auxiliary-loss-free balancing. A per-expert bias, added to the
  scores for *selection only* (never to the combine weights), is moved by ``rate * sign(mean - count)``
  after every optimizer step; LanguageModule calls :meth:`MoE.update_bias` with the step's counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.model.ffn import DenseFFN, SwiGLU, swiglu_hidden

EXPERTS = ("gelu", "swiglu")
SCORES = ("softmax", "sigmoid")


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
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.0,
        bias_update_rate: float = 0.0,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if expert not in EXPERTS:
            raise ValueError(f"ffn.expert: unknown {expert!r}; valid choices: {', '.join(EXPERTS)}")
        if score not in SCORES:
            raise ValueError(f"ffn.score: unknown {score!r}; valid choices: {', '.join(SCORES)}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"ffn.top_k: {top_k} must be between 1 and n_experts={n_experts}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"ffn.capacity_factor: {capacity_factor} must be positive or null (dropless)")
        self.n_experts, self.top_k = n_experts, top_k
        self.score, self.renormalize = score, renormalize
        self.capacity_factor = capacity_factor
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.bias_update_rate = bias_update_rate

        self.router = nn.Linear(d_model, n_experts, bias=False)
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
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
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
        y = torch.cat([self.experts[e](part)[0] for e, part in enumerate(xs.split(sizes))])
        out = torch.zeros_like(x).index_add_(0, tok, y * weight[order, None])
        if self.shared is not None:
            out = out + self.shared(x)[0]

        # Balancing losses (weighted) and detached statistics.
        f = counts.float() / (N * k)  # fraction of assignments per expert, sums to 1
        aux = E * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).square().mean()
        losses = {}
        if self.aux_loss_coef:
            losses["moe_aux"] = self.aux_loss_coef * aux
        if self.z_loss_coef:
            losses["moe_z"] = self.z_loss_coef * z
        entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
        stats = {
            "load": f.detach(),  # (E,)
            "counts": counts.detach(),  # (E,) token assignments, for update_bias
            "entropy": entropy.detach(),
            "dropped": (1 - kept_counts.sum() / (N * k)).detach().float(),
            "aux": aux.detach(),
            "z": z.detach(),
        }
        return out.reshape(shape), losses, stats

    # ---- DeepSeek-V3 auxiliary-loss-free balancing ---------------------------------------
    @torch.no_grad()
    def update_bias(self, counts: torch.Tensor) -> None:
        """Raise the selection bias of under-loaded experts and lower it for over-loaded ones by
        ``bias_update_rate`` (DeepSeek-V3, section 2.1.2). A no-op when the rate is 0."""
        if self.bias_update_rate:
            counts = counts.float()
            self.expert_bias += self.bias_update_rate * torch.sign(counts.mean() - counts)


def moe_layers(model: nn.Module) -> dict[str, MoE]:
    """The model's MoE layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MoE)}


def active_params(model: nn.Module) -> int:
    """Parameters used for one token: all of them, less the routed experts it is not sent to."""
    total = sum(p.numel() for p in model.parameters())
    for layer in moe_layers(model).values():
        per_expert = sum(p.numel() for p in layer.experts[0].parameters())
        total -= (layer.n_experts - layer.top_k) * per_expert
    return total
