"""Training batches of random windows that resume exactly and divide among DDP ranks.

Window ``i`` starts at an offset drawn from ``(seed, i)`` alone. Global batch ``b`` is windows
``[b * B * W, (b + 1) * B * W)`` for ``W`` ranks of ``B`` windows each; rank ``r`` takes the ``r``-th
slice, so a run on ``W`` processes sees the same windows per step as one process with batch
``B * W``, ranks never share a window, and no window repeats within an epoch of planned samples.
A stream starts at any batch, which is how a resumed run continues where its checkpoint left off.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def window_start(seed: int, i: int, n_tokens: int, context_length: int) -> int:
    g = np.random.default_rng([seed, i])
    return int(g.integers(0, n_tokens - context_length - 1))


class WindowBatches(IterableDataset):
    """(B, T+1) int64 batches ``start .. n_batches - 1`` of one rank; DataLoader workers take
    every ``num_workers``-th batch, which the loader interleaves back into order."""

    def __init__(self, tokens: np.ndarray, context_length: int, batch_size: int, n_batches: int,
                 seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if len(tokens) <= context_length + 1:
            raise ValueError(f"the training split has {len(tokens)} tokens, fewer than a window of "
                             f"context_length + 1 = {context_length + 1}")
        self.tokens, self.T, self.B, self.seed = tokens, context_length, batch_size, seed
        self.n_batches, self.rank, self.world_size, self.start = n_batches, rank, world_size, start

    def window_ids(self, b: int) -> range:
        first = (b * self.world_size + self.rank) * self.B
        return range(first, first + self.B)

    def batch(self, b: int) -> torch.Tensor:
        starts = [window_start(self.seed, i, len(self.tokens), self.T) for i in self.window_ids(b)]
        rows = np.stack([self.tokens[s : s + self.T + 1] for s in starts])  # (B, T+1)
        return torch.from_numpy(rows.astype(np.int64))

    def __len__(self) -> int:  # the whole epoch: Lightning counts a resumed epoch's batches itself
        return self.n_batches

    def __iter__(self):
        start = self.start  # read now: the loader resets it once this pass has begun
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return (self.batch(b) for b in range(start + worker, self.n_batches, workers))


class ResumableLoader(DataLoader):
    """A DataLoader over WindowBatches whose first pass starts at ``dataset.start``; later passes
    (epochs) start at batch 0."""

    def __init__(self, dataset: WindowBatches, num_workers: int = 0):
        super().__init__(dataset, batch_size=None, num_workers=num_workers)

    def __iter__(self):
        it = super().__iter__()
        self.dataset.start = 0
        return it
