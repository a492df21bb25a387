"""lmlab's token shard format: raw ``uint16``/``uint32`` token files, written and read in pieces.

A prepared split is a directory of ``shard-<unit>-<k>.bin`` files, each the tokens of consecutive
documents (every document ends with the end-of-text token), no header: the manifest
(lmlab.data.manifest) holds the dtype and each file's token count. A shard is written under a
temporary name and renamed when complete, so a file with the final name is always whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAX_OPEN = 64  # memory maps kept open at once by a reader (each holds a file descriptor)


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16 if n_vocab <= 2**16 else np.uint32)


class ShardWriter:
    """Appends token arrays to ``<directory>/<stem>-<k>.bin``, starting a new file once one holds
    ``max_tokens`` tokens. Only the array being appended is in memory."""

    def __init__(self, directory: Path, stem: str, dtype: np.dtype, max_tokens: int):
        self.directory, self.stem = Path(directory), stem
        self.dtype, self.max_tokens = dtype, max_tokens
        self.done: list[tuple[str, int]] = []  # (file name, tokens) of each complete shard
        self._file, self._tokens = None, 0

    def write(self, tokens: np.ndarray) -> None:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path(temporary=True), "wb")
        tokens.astype(self.dtype, copy=False).tofile(self._file)
        self._tokens += len(tokens)
        if self._tokens >= self.max_tokens:
            self._finish()

    def close(self) -> list[tuple[str, int]]:
        """Complete the last shard; return (file name, tokens) of every shard written."""
        if self._file is not None:
            self._finish()
        return self.done

    def _path(self, temporary: bool = False) -> Path:
        name = f"{self.stem}-{len(self.done):04d}.bin"
        return self.directory / (f".{name}.tmp" if temporary else name)

    def _finish(self) -> None:
        self._file.close()
        os.replace(self._path(temporary=True), self._path())  # atomic: whole or absent
        self.done.append((self._path().name, self._tokens))
        self._file, self._tokens = None, 0


class ShardWindows:
    """The non-overlapping windows of ``length`` tokens inside each shard of a split, in shard
    order (a window never spans two shards; each shard's last ``tokens % length`` are unused).
    Shards are memory-mapped on first use, at most MAX_OPEN at a time: nothing is loaded."""

    def __init__(self, split_dir: Path, shards: list[dict], dtype: str, length: int):
        self.files = [Path(split_dir) / s["file"] for s in shards]
        self.dtype, self.length = np.dtype(dtype), length
        counts = [s["tokens"] // length for s in shards]
        self.first = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # (shards + 1,)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.first[-1])

    def shard_of(self, j: int) -> int:
        return int(np.searchsorted(self.first, j, side="right")) - 1

    def __getitem__(self, j: int) -> np.ndarray:
        """Window ``j``: (length,) tokens, a view of the memory map."""
        if not 0 <= j < len(self):
            raise IndexError(f"window {j} of {len(self)}")
        s = self.shard_of(j)
        start = int(j - self.first[s]) * self.length
        return self._map(s)[start : start + self.length]

    def tokens(self) -> np.ndarray:
        """Every token of the split, shard after shard, read into memory."""
        return np.concatenate([np.memmap(f, dtype=self.dtype, mode="r") for f in self.files])

    def _map(self, s: int) -> np.memmap:
        if s not in self._maps:
            if len(self._maps) >= MAX_OPEN:
                self._maps.clear()
            self._maps[s] = np.memmap(self.files[s], dtype=self.dtype, mode="r")
        return self._maps[s]

    def __getstate__(self) -> dict:  # dataloader workers open their own maps (never pickle data)
        return {**self.__dict__, "_maps": {}}
