"""Length extrapolation: a model's loss on held-out text at several context lengths (multiples of
the one it was trained at), and its loss by token position within the window.

At each length the held-out tokens are cut into evenly spaced windows (``FixedWindows``: every
non-overlapping window unless ``max_windows`` caps them), so every length scores about the same
text with a different amount of context. At the trained length with the same windows this is
exactly the ordinary validation loss. A learned position table has no rows past its length: the
lengths beyond it are reported as n/a (None), not run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.fixed_windows import FixedWindows
from lmlab.errors import UserError

TOKENS_PER_BATCH = 1024  # logits of (windows x length) tokens x vocab at a time: ~200 MB in fp32


def encodes(model, length: int) -> bool:
    """Whether the model can encode positions 0 .. length-1 (a learned table: not past its rows)."""
    try:
        model.position.check_positions(length)
    except ValueError:
        return False
    return True


@torch.no_grad()
def token_losses(model, tokens: np.ndarray, length: int, max_windows: int | None = None) -> torch.Tensor:
    """Cross-entropy of every target token of every window: (windows, length)."""
    windows = FixedWindows(tokens, length, max_windows)
    per_batch = max(1, TOKENS_PER_BATCH // length)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(windows), per_batch):
        batch = torch.stack([windows[j] for j in range(i, min(i + per_batch, len(windows)))])
        batch = batch.to(device)  # (B, T+1)
        logits = model(batch[:, :-1]).logits  # (B, T, vocab)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none")
        out.append(ce.view(batch.shape[0], length).cpu())
    return torch.cat(out)


def by_position(losses: torch.Tensor, buckets: int = 16) -> dict[str, list]:
    """Mean loss by position within the window, in up to ``buckets`` equal ranges of positions:
    ``{"start": first position of each range, "loss": its mean loss}``."""
    per_position = losses.double().mean(0)  # (T,)
    edges = np.unique(np.linspace(0, len(per_position), min(buckets, len(per_position)) + 1).astype(int))
    return {"start": [int(a) for a in edges[:-1]],
            "loss": [float(per_position[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]}


def check_factors(factors, context_length: int) -> None:
    """Refuse an ``extrapolate`` that is not a list of multiples of the trained context, each
    giving windows of at least one token; before any model or data is loaded. None: not asked."""
    if factors is None:
        return
    is_list = isinstance(factors, Sequence) and not isinstance(factors, str)
    if not is_list or not all(isinstance(f, Real) and not isinstance(f, bool) and f * context_length >= 1
                              for f in factors):
        shown = list(factors) if is_list else factors
        raise UserError(f"extrapolate={shown!r}: must be a list of multiples of the trained context "
                         f"({context_length} tokens), each a window of at least one token, e.g. [1,2,4,8]")


def extrapolation(model, tokens: np.ndarray, factors: list[float], trained_length: int,
                  max_windows: int | None = None, buckets: int = 16) -> list[dict]:
    """One row per factor: ``{"factor", "length", "loss", "ppl", "windows", "by_position"}``;
    loss, ppl and by_position are None where the model cannot encode the positions or the text
    is shorter than one window."""
    was_training = model.training
    model.eval()
    rows = []
    for factor in factors:
        length = int(round(factor * trained_length))
        row = {"factor": factor, "length": length, "loss": None, "ppl": None, "windows": 0,
               "by_position": None}
        if encodes(model, length) and len(tokens) > length + 1:
            losses = token_losses(model, tokens, length, max_windows)
            loss = float(losses.double().mean())
            row.update(loss=loss, ppl=math.exp(loss), windows=len(losses),
                       by_position=by_position(losses, buckets))
        rows.append(row)
    model.train(was_training)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["length  factor  windows      loss        ppl"]
    for r in rows:
        loss = f"{r['loss']:9.4f}  {r['ppl']:9.2f}" if r["loss"] is not None else f"{'n/a':>9}  {'n/a':>9}"
        lines.append(f"{r['length']:6d}  {r['factor']:6g}  {r['windows']:7d}  {loss}")
    return "\n".join(lines)
