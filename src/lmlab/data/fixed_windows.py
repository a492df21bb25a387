"""Validation and evaluation windows: evenly spaced, the same every time. Needs torch alone, so
scoring code (``lmlab.extrapolation``) loads without Lightning."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class FixedWindows(Dataset):
    """A deterministic set of up to ``max_windows`` evenly spaced windows (validation)."""

    def __init__(self, tokens: np.ndarray, context_length: int, max_windows: int | None):
        if len(tokens) <= context_length + 1:
            raise ValueError(
                f"the validation split has {len(tokens)} tokens, fewer than a window of "
                f"context_length + 1 = {context_length + 1}"
            )
        last = len(tokens) - context_length - 1
        n_all = last // context_length + 1
        n = n_all if not max_windows else min(max_windows, n_all)
        self.starts = np.linspace(0, last, n).astype(np.int64)
        self.tokens, self.T = tokens, context_length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        s = int(self.starts[i])
        return torch.from_numpy(self.tokens[s : s + self.T + 1].astype(np.int64))
