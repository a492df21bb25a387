"""Train on a prepared corpus (``data=tokens data.path=<dir>``): litdata token shards.

Windows of ``context_length + 1`` tokens are read from the shards by litdata's StreamingDataset
(``TokensLoader(block_size)``: non-overlapping windows, shuffled by ``seed``), which splits the
windows among DDP ranks and dataloader workers by itself. Its StreamingDataLoader has a
``state_dict``, so Lightning stores the data position in every checkpoint and a resumed run goes on
from there. The manifest is checked before any model is built.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from lmlab.data.manifest import check_tokenizer, read_manifest


def stack_windows(items: list[np.ndarray]) -> torch.Tensor:
    """(B, T+1) int64 from B windows stored as uint16/uint32."""
    return torch.from_numpy(np.stack(items).astype(np.int64))


class ShardDataModule(L.LightningDataModule):
    """Serves (B, T+1) token windows of ``path/train`` and ``path/val``."""

    def __init__(
        self,
        path: str,
        tokenizer: str = "gpt2",
        vocab_size: int = 50257,
        context_length: int = 256,
        batch_size: int = 16,
        val_windows: int | None = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.manifest = read_manifest(path)
        check_tokenizer(self.manifest, tokenizer, vocab_size, path)
        self.path, self.tokenizer_name = Path(path).expanduser().resolve(), tokenizer
        self.context_length, self.batch_size = context_length, batch_size
        self.val_windows, self.seed, self.num_workers = val_windows, seed, num_workers
        for split in ("train", "val"):
            windows = self.manifest["tokens"][split] // (context_length + 1)
            if windows < 1:
                raise ValueError(f"data.path: the {split} split of {path} has "
                                 f"{self.manifest['tokens'][split]} tokens, fewer than a window of "
                                 f"context_length + 1 = {context_length + 1}")

    def _loader(self, split: str, shuffle: bool, subsample: float = 1.0):
        from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

        ds = StreamingDataset(str(self.path / split), item_loader=TokensLoader(self.context_length + 1),
                              shuffle=shuffle, seed=self.seed, drop_last=True, subsample=subsample)
        return StreamingDataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                                   collate_fn=stack_windows, drop_last=shuffle)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        windows = self.manifest["tokens"]["val"] // (self.context_length + 1)
        share = 1.0 if not self.val_windows else min(1.0, self.val_windows / windows)
        return self._loader("val", shuffle=False, subsample=share)
