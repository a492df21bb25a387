"""Train on a prepared corpus (``data=tokens data.path=<dir>``): lmlab token shards.

The training stream is the non-overlapping windows of ``context_length + 1`` tokens inside the
shards (lmlab.data.shards.ShardWindows), in an order drawn from ``seed``: window ``i`` of the stream
is window ``perm_e[i % n]`` of the corpus, ``e = i // n`` the epoch and ``perm_e`` a numpy
permutation drawn from ``(seed, e)``. Batches are planned, divided among DDP ranks and resumed
exactly as the Shakespeare windows are (lmlab.data.window_stream, TokenDataModule's state): each
rank takes its slice of every global batch, and a resumed run starts at its checkpoint's batch.
Validation reads up to ``val_windows`` evenly spaced windows of the held-out split. Shards are
memory-mapped; the permutation costs 4 bytes per window. The manifest is checked before any model
is built.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmlab.data.datamodule import TokenDataModule
from lmlab.data.manifest import check_tokenizer, read_manifest
from lmlab.data.shards import ShardWindows
from lmlab.data.window_stream import WindowBatches
from lmlab.errors import check_choice


def window_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """(n,) a permutation of the window ids, the same for every rank and run with this seed."""
    order = np.arange(n, dtype=np.uint32 if n < 2**32 else np.int64)
    np.random.default_rng([seed, epoch]).shuffle(order)
    return order


class ShardWindowBatches(WindowBatches):
    """WindowBatches (a rank's slice of each global batch, starting at ``start``) over shard
    windows in the seed's order instead of random offsets into one array."""

    def __init__(self, windows: ShardWindows, batch_size: int, n_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1, start: int = 0):
        # WindowBatches' constructor takes one token array; the fields its methods use are these
        self.windows, self.B, self.n_batches, self.seed = windows, batch_size, n_batches, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self._orders: dict[int, np.ndarray] = {}

    def corpus_windows(self, b: int) -> list[int]:
        """Ids (into ``windows``) of this rank's windows of batch ``b``."""
        n = len(self.windows)
        return [int(self._order(i // n)[i % n]) for i in self.window_ids(b)]

    def batch(self, b: int) -> torch.Tensor:
        rows = np.stack([self.windows[j] for j in self.corpus_windows(b)])  # (B, T+1)
        return torch.from_numpy(rows.astype(np.int64))

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a batch spans at most two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = window_order(self.seed, epoch, len(self.windows))
        return self._orders[epoch]


class SpacedWindows(Dataset):
    """Up to ``max_windows`` evenly spaced windows of a split, as (T+1,) int64 (validation)."""

    def __init__(self, windows: ShardWindows, max_windows: int | None):
        n = len(windows)
        self.windows = windows
        self.ids = np.linspace(0, n - 1, min(n, max_windows or n)).round().astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.windows[int(self.ids[i])].astype(np.int64))


class ShardDataModule(TokenDataModule):
    """Serves (B, T+1) token windows of ``path/train`` and ``path/val``; batch planning, rank
    split and the resumed data position (state_dict) are TokenDataModule's."""

    def __init__(
        self,
        path: str,
        tokenizer: str = "gpt2",
        vocab_size: int = 50257,
        context_length: int = 256,
        batch_size: int = 16,
        train_samples: int | None = None,
        val_windows: int | None = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        L.LightningDataModule.__init__(self)  # not TokenDataModule's: there is no text to read
        if not path:
            raise ValueError("data.path: data=tokens needs data.path=<dir>, a corpus made by "
                             "scripts/prepare_data.py")
        self.source = "tokens"
        self.manifest = read_manifest(path)
        check_tokenizer(self.manifest, tokenizer, vocab_size, path)
        self.path, self.tokenizer_name = Path(path).expanduser().resolve(), tokenizer
        self.context_length, self.batch_size = context_length, batch_size
        self.train_samples, self.val_windows = train_samples, val_windows
        self.seed, self.num_workers = seed, num_workers
        self.test_docs = None  # a prepared corpus has train and val splits only
        self._batches_done = 0  # restored from a checkpoint by load_state_dict
        self.windows = {}
        for split in ("train", "val"):
            shards = self.manifest["shards"][split]
            self.windows[split] = ShardWindows(self.path / split, shards, self.manifest["dtype"],
                                               context_length + 1)
            if len(self.windows[split]) < 1:
                raise ValueError(f"data.path: no {split} shard of {path} holds a window of "
                                 f"context_length + 1 = {context_length + 1} tokens (largest: "
                                 f"{max(s['tokens'] for s in shards)}): lower model.context_length")

    def prepare_data(self) -> None:  # prepared by scripts/prepare_data.py
        pass

    def check_windows(self) -> None:  # done in __init__ from the manifest
        pass

    def setup(self, stage: str | None = None) -> None:
        pass

    def window_batches(self, n_batches: int, rank: int, world: int, start: int) -> ShardWindowBatches:
        """Batches ``start .. n_batches - 1`` of this rank (shuffled windows of the train shards)."""
        return ShardWindowBatches(self.windows["train"], self.batch_size, n_batches, self.seed, rank,
                                  world, start=start)

    def _planned_samples(self, per_step: int) -> int:
        if self.trainer and self.trainer.max_steps < 0:  # trained by epochs: one pass each
            return len(self.windows["train"])
        return super()._planned_samples(per_step)

    def split_tokens(self, split: str) -> np.ndarray:
        """All tokens of the ``train`` or ``val`` shards, one after another (evaluation and
        extrapolation cut their own windows; they are read into memory)."""
        check_choice("split", split, ("train", "val"))
        return self.windows[split].tokens()

    def val_dataloader(self) -> DataLoader:
        return self.held_out_loader(SpacedWindows(self.windows["val"], self.val_windows))
