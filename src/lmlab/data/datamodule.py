"""Token files and the LightningDataModule that serves windows of them.

Documents are split into train and validation by whole document (whole plays for Shakespeare),
tokenized once and cached as ``uint16``/``uint32`` memory-mapped files. The cache key hashes the
tokenizer name and the text of each split, so a change of tokenizer or corpus re-tokenizes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmlab.data.corpus import check_text_files, shakespeare_plays, text_files
from lmlab.data.tokenizer import get_tokenizer


def split_documents(
    docs: dict[str, str], val_docs: list[str] | None, val_fraction: float
) -> tuple[list[str], list[str]]:
    """Return (train_texts, val_texts). ``val_docs`` names held-out documents; otherwise, the
    last ``val_fraction`` of the text (of a single document) or of the documents is held out."""
    if val_docs:
        unknown = [d for d in val_docs if d not in docs]
        if unknown:
            raise ValueError(
                f"data.val_docs: unknown document(s) {unknown}; valid choices: {', '.join(docs)}"
            )
        train = [t for n, t in docs.items() if n not in val_docs]
        val = [docs[n] for n in val_docs]
        return train, val
    if len(docs) == 1:
        (text,) = docs.values()
        cut = int(len(text) * (1 - val_fraction))
        return [text[:cut]], [text[cut:]]
    names = list(docs)
    n_val = max(1, round(len(names) * val_fraction))
    return [docs[n] for n in names[:-n_val]], [docs[n] for n in names[-n_val:]]


def tokenize_to_file(texts: list[str], tokenizer_name: str, cache_dir: Path) -> Path:
    """Tokenize ``texts`` (documents joined by end-of-text) into a cached token file; reuse it."""
    key = hashlib.sha256(tokenizer_name.encode())
    for t in texts:
        key.update(hashlib.sha256(t.encode()).digest())
    digest = key.hexdigest()[:16]
    path = cache_dir / f"{tokenizer_name}-{digest}.bin"
    if path.exists():
        return path
    enc = get_tokenizer(tokenizer_name)
    ids: list[int] = []
    for tokens in enc.encode_ordinary_batch(texts):
        ids.extend(tokens)
        ids.append(enc.eot_token)
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    np.asarray(ids, dtype=dtype).tofile(tmp)
    meta = {"tokenizer": tokenizer_name, "dtype": np.dtype(dtype).name, "tokens": len(ids)}
    path.with_suffix(".json").write_text(json.dumps(meta))
    os.replace(tmp, path)  # atomic: concurrent runs never see a half-written file
    return path


def load_tokens(path: Path) -> np.memmap:
    meta = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(path, dtype=meta["dtype"], mode="r")


class RandomWindows(Dataset):
    """``num_samples`` windows at random offsets. Sample ``i`` depends only on (seed, i), so every
    run with the same seed sees the same data in the same order, whatever its model."""

    def __init__(self, tokens: np.ndarray, context_length: int, num_samples: int, seed: int):
        if len(tokens) <= context_length + 1:
            raise ValueError(
                f"the training split has {len(tokens)} tokens, fewer than a window of "
                f"context_length + 1 = {context_length + 1}"
            )
        self.tokens, self.T, self.n, self.seed = tokens, context_length, num_samples, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        g = np.random.default_rng([self.seed, i])
        start = int(g.integers(0, len(self.tokens) - self.T - 1))
        return torch.from_numpy(self.tokens[start : start + self.T + 1].astype(np.int64))


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


class TokenDataModule(L.LightningDataModule):
    """Serves (B, T+1) token windows; the module shifts them into inputs and targets."""

    def __init__(
        self,
        source: str = "shakespeare",
        path: str | list[str] | None = None,
        val_docs: list[str] | None = None,
        val_fraction: float = 0.1,
        tokenizer: str = "gpt2",
        context_length: int = 256,
        batch_size: int = 16,
        train_samples: int = 100_000,
        val_windows: int | None = 64,
        seed: int = 0,
        cache_dir: str = "outputs/cache",
        num_workers: int = 0,
    ):
        super().__init__()
        if source not in ("shakespeare", "text"):
            raise ValueError(f"data.source: unknown {source!r}; valid choices: shakespeare, text")
        paths = [path] if isinstance(path, str) else list(path or [])
        if source == "text":
            check_text_files(paths)  # fail before any model is built
        self.source, self.paths = source, paths
        self.val_docs = list(val_docs) if val_docs else None
        self.val_fraction, self.tokenizer_name = val_fraction, tokenizer
        self.context_length, self.batch_size = context_length, batch_size
        self.train_samples, self.val_windows = train_samples, val_windows
        self.seed, self.cache_dir, self.num_workers = seed, Path(cache_dir), num_workers
        self.token_files: dict[str, Path] = {}

    def documents(self) -> dict[str, str]:
        return shakespeare_plays() if self.source == "shakespeare" else text_files(self.paths)

    def prepare_data(self) -> None:
        train, val = split_documents(self.documents(), self.val_docs, self.val_fraction)
        for split, texts in (("train", train), ("val", val)):
            self.token_files[split] = tokenize_to_file(texts, self.tokenizer_name, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self.token_files:  # other DDP ranks: the files exist, this only finds them
            self.prepare_data()
        self.train_tokens = load_tokens(self.token_files["train"])
        self.val_tokens = load_tokens(self.token_files["val"])

    def train_dataloader(self) -> DataLoader:
        ds = RandomWindows(self.train_tokens, self.context_length, self.train_samples, self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        ds = FixedWindows(self.val_tokens, self.context_length, self.val_windows)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
