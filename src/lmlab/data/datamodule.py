"""Token files and the LightningDataModule that serves windows of them.

Documents are split into train, validation and (optionally) test by whole document (whole plays
for Shakespeare; the best checkpoint is chosen on validation, arms are compared on test),
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
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader

from lmlab.data.corpus import check_text_files, shakespeare_plays, text_files
from lmlab.data.fixed_windows import FixedWindows
from lmlab.data.tokenizer import get_tokenizer
from lmlab.data.window_stream import ResumableLoader, WindowBatches
from lmlab.errors import check_choice


def split_documents(
    docs: dict[str, str], val_docs: list[str] | None, val_fraction: float,
    test_docs: list[str] | None = None,
) -> dict[str, list[str]]:
    """Texts of the ``train``, ``val`` and ``test`` splits. ``val_docs`` and ``test_docs`` name
    held-out documents; without ``val_docs``, the last ``val_fraction`` of the text (of a single
    document) or of the documents is held out for validation. ``test`` is empty without
    ``test_docs``."""
    for key, names in (("val_docs", val_docs), ("test_docs", test_docs)):
        for name in names or []:
            check_choice(f"data.{key}", name, list(docs))
    test = [docs[n] for n in test_docs or []]
    docs = {n: t for n, t in docs.items() if n not in (test_docs or [])}
    if val_docs:
        train = [t for n, t in docs.items() if n not in val_docs]
        return {"train": train, "val": [docs[n] for n in val_docs], "test": test}
    if len(docs) == 1:
        (text,) = docs.values()
        cut = int(len(text) * (1 - val_fraction))
        return {"train": [text[:cut]], "val": [text[cut:]], "test": test}
    names = list(docs)
    n_val = max(1, round(len(names) * val_fraction))
    return {"train": [docs[n] for n in names[:-n_val]], "val": [docs[n] for n in names[-n_val:]],
            "test": test}


def tokenize_to_file(texts: list[str], tokenizer_name: str, cache_dir: Path) -> Path:
    """Tokenize ``texts`` (documents joined by end-of-text) into a cached token file; reuse it."""
    key = hashlib.sha256(tokenizer_name.encode())
    for t in texts:
        key.update(hashlib.sha256(t.encode()).digest())
    digest = key.hexdigest()[:16]
    path = cache_dir / f"{tokenizer_name}-{digest}.bin"
    if path.exists() and cache_is_whole(path):
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


def cache_is_whole(path: Path) -> bool:
    """Whether a cached token file holds exactly the tokens its .json says (a file cut short by a
    full disk or a crash, or without its .json, is not trusted: it is tokenized again)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        return path.stat().st_size == meta["tokens"] * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_tokens(path: Path) -> np.memmap:
    meta = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(path, dtype=meta["dtype"], mode="r")


class TokenDataModule(L.LightningDataModule):
    """Serves (B, T+1) token windows; the module shifts them into inputs and targets."""

    def __init__(
        self,
        source: str = "shakespeare",
        path: str | list[str] | None = None,
        val_docs: list[str] | None = None,
        test_docs: list[str] | None = None,
        val_fraction: float = 0.1,
        tokenizer: str = "gpt2",
        context_length: int = 256,
        batch_size: int = 16,
        train_samples: int | None = None,
        val_windows: int | None = 64,
        test_windows: int | None = None,
        seed: int = 0,
        cache_dir: str = "outputs/cache",
        num_workers: int = 0,
    ):
        super().__init__()
        check_choice("data.source", source, ("shakespeare", "text"))
        paths = [path] if isinstance(path, str) else list(path or [])
        if source == "text":
            check_text_files(paths)  # fail before any model is built
        self.source, self.paths = source, paths
        self.val_docs = list(val_docs) if val_docs else None
        self.test_docs = list(test_docs) if test_docs else None
        self.val_fraction, self.tokenizer_name = val_fraction, tokenizer
        self.context_length, self.batch_size = context_length, batch_size
        self.train_samples, self.val_windows = train_samples, val_windows
        self.test_windows = test_windows
        self.seed, self.cache_dir, self.num_workers = seed, Path(cache_dir), num_workers
        self.token_files: dict[str, Path] = {}
        self._batches_done = 0  # restored from a checkpoint by load_state_dict

    def check_windows(self) -> None:
        """Tokenize (or find the cache) now and refuse a split shorter than one window, before
        any model is built."""
        self.prepare_data()
        for split, path in self.token_files.items():
            n = len(load_tokens(path))
            if n <= self.context_length + 1:
                where = f"data.path={','.join(self.paths)}" if self.paths else f"data.source={self.source}"
                raise ValueError(f"{where}: the {split} split has {n} tokens, fewer than one window of "
                                 f"model.context_length + 1 = {self.context_length + 1}; give more "
                                 f"text or lower model.context_length")

    def documents(self) -> dict[str, str]:
        return shakespeare_plays() if self.source == "shakespeare" else text_files(self.paths)

    def prepare_data(self) -> None:
        splits = split_documents(self.documents(), self.val_docs, self.val_fraction, self.test_docs)
        for split, texts in splits.items():
            if texts:
                self.token_files[split] = tokenize_to_file(texts, self.tokenizer_name, self.cache_dir)

    @property
    def has_test_split(self) -> bool:
        return bool(self.test_docs)

    def split_tokens(self, split: str) -> np.memmap:
        """The tokens of ``train``, ``val``, ``test`` or ``all`` (every document, e.g. the whole of
        ``data.path`` for evaluation), tokenized once and cached like the others."""
        if split == "all":
            texts = list(self.documents().values())
            return load_tokens(tokenize_to_file(texts, self.tokenizer_name, self.cache_dir))
        check_choice("split", split, ("train", "val", "test", "all"))
        if not self.token_files:
            self.prepare_data()
        if split not in self.token_files:
            raise ValueError("split: test needs held-out test documents (data.test_docs)")
        return load_tokens(self.token_files[split])

    def setup(self, stage: str | None = None) -> None:
        if not self.token_files:  # other DDP ranks: the files exist, this only finds them
            self.prepare_data()
        self.train_tokens = load_tokens(self.token_files["train"])
        self.val_tokens = load_tokens(self.token_files["val"])
        self.test_tokens = load_tokens(self.token_files["test"]) if self.has_test_split else None

    def train_dataloader(self) -> DataLoader:
        """This rank's share of the planned windows, from where a resumed checkpoint stopped."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        per_step = self.batch_size * world
        samples = self.train_samples or self._planned_samples(per_step)
        # whole optimizer steps only: an epoch ending inside an accumulated step made Lightning
        # step on fewer batches, and a resume (global_step x accumulate batches) started elsewhere
        accumulate = self.trainer.accumulate_grad_batches if self.trainer else 1
        n_batches = samples // (per_step * accumulate) * accumulate
        if n_batches < 1:
            raise ValueError(f"data.train_samples: {samples} is fewer than one optimizer step of "
                             f"{per_step * accumulate} windows")
        ds = self.window_batches(n_batches, rank, world, start=self._batches_done % n_batches)
        return ResumableLoader(ds, num_workers=self.num_workers)

    def window_batches(self, n_batches: int, rank: int, world: int, start: int) -> WindowBatches:
        """Batches ``start .. n_batches - 1`` of this rank (random windows of the train split)."""
        return WindowBatches(self.train_tokens, self.context_length, self.batch_size, n_batches,
                             self.seed, rank, world, start=start)

    def _planned_samples(self, per_step: int) -> int:
        if not self.trainer or self.trainer.max_steps < 0:
            raise ValueError("data.train_samples: set it, or set trainer.max_steps to plan it")
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches * per_step

    def state_dict(self) -> dict:
        """Saved in every checkpoint: how many training batches this rank has consumed."""
        trainer = self.trainer
        return {"train_batches": trainer.global_step * trainer.accumulate_grad_batches} if trainer else {}

    def load_state_dict(self, state: dict) -> None:
        self._batches_done = int(state.get("train_batches", 0))

    def val_dataloader(self) -> DataLoader:
        return self.held_out_loader(FixedWindows(self.val_tokens, self.context_length, self.val_windows))

    def held_out_loader(self, ds) -> DataLoader:
        """Validation or test windows. Under DDP each rank scores its own share, unpadded
        (Lightning's DistributedSampler repeats windows until every rank has as many: 5 windows
        on 2 ranks counted one twice and moved the mean), and the module's weighted mean joins
        the shares exactly. FSDP keeps Lightning's sampler: its ranks must step together."""
        trainer, sampler = self.trainer, None
        if trainer is not None and trainer.world_size > 1 and not isinstance(trainer.strategy, FSDPStrategy):
            sampler = UnrepeatedDistributedSampler(ds, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        """The test split's windows (all of them unless ``test_windows``): the figures arms are
        compared on, scored once per run, so as precise as the split allows."""
        if self.test_tokens is None:
            raise ValueError("data.test_docs: no test split configured")
        return self.held_out_loader(FixedWindows(self.test_tokens, self.context_length, self.test_windows))
