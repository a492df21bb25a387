"""Text sources a corpus is prepared from, read in bounded batches of documents.

A source is split into *units* (a file, a row range of a saved dataset, a shard of a hub dataset)
that worker processes read independently; each unit is streamed in batches, so memory stays bounded
whatever the corpus size. JSONL, Parquet, saved and hub datasets are read with Hugging Face
``datasets``; plain text files are one document each, and must be UTF-8 (a file with a NUL byte
or invalid UTF-8 in its first 64 KiB is refused, as ``data=text`` refuses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmlab.data.corpus import check_utf8

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
FILE_KINDS = {"parquet": PARQUET_SUFFIXES, "json": JSON_SUFFIXES, "text": TEXT_SUFFIXES}
KIND_NAMES = {"parquet": "Parquet", "json": "JSON", "text": "text"}
BATCH_ROWS = 256  # documents read at a time
TEXT_DTYPES = ("string", "large_string")  # datasets' Value dtypes of a text column
KINDS = "text files, JSONL, Parquet, a `datasets` save_to_disk directory, a hub dataset name"


@dataclass(frozen=True)
class Source:
    """Where the text is: ``kind`` in text | json | parquet | saved | hub, and how to reach it."""

    kind: str
    location: str
    column: str = "text"
    split: str = "train"

    def units(self, n_parts: int) -> list[tuple]:
        """Independent pieces of work: files, or row ranges / shards for one dataset."""
        if self.kind in ("text", "json", "parquet"):
            return [(f,) for f in _files(Path(self.location), self.kind)]
        if self.kind == "saved":
            n = len(self._saved())
            step = max(BATCH_ROWS, -(-n // max(1, n_parts)))
            return [(a, min(a + step, n)) for a in range(0, n, step)]
        return [(i,) for i in range(self._hub().n_shards)]

    def read(self, unit: tuple) -> Iterator[list[tuple[str, bool]]]:
        """Batches of (text, ends_a_document) of one unit; None and empty documents are skipped.
        A text file is one document, read in pieces cut where GPT-2-style pre-tokenisation always
        cuts (before a space that follows a non-space and precedes a letter)."""
        if self.kind == "text":
            pieces = list(_pieces(Path(unit[0])))
            for i in range(0, len(pieces), 16):
                yield [(t, i + j == len(pieces) - 1) for j, t in enumerate(pieces[i : i + 16])]
            return
        if self.kind == "saved":
            ds, (a, b) = self._saved(), unit
            for i in range(a, b, BATCH_ROWS):
                yield [(t, True) for t in ds[i : min(i + BATCH_ROWS, b)][self.column] if t]
            return
        if self.kind == "hub":
            ds = self._hub().shard(num_shards=self._hub().n_shards, index=unit[0])
        else:
            ds = _stream_files(self.kind, [unit[0]])
        for batch in ds.iter(batch_size=BATCH_ROWS):
            yield [(t, True) for t in batch[self.column] if t]

    def columns(self) -> dict[str, bool]:
        """Column names of the source, each with whether it holds text (for text files: ``text``)."""
        if self.kind == "text":
            return {"text": True}
        try:
            ds = (self._saved() if self.kind == "saved" else self._hub() if self.kind == "hub"
                  else _stream_files(self.kind, [self.units(1)[0][0]]))
            if ds.features is not None:
                return {name: getattr(f, "dtype", None) in TEXT_DTYPES for name, f in ds.features.items()}
            first = next(iter(ds), None)
        except StopIteration:  # an empty file: datasets finds no first row to infer columns from
            return {}
        return {name: isinstance(v, str) for name, v in (first or {}).items()}

    def _saved(self):
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(self.location)  # memory-mapped Arrow files: nothing is read yet
        if isinstance(ds, DatasetDict):
            if self.split not in ds:
                raise ValueError(f"--split: unknown {self.split!r}; valid choices: {', '.join(ds)}")
            ds = ds[self.split]
        return ds

    def _hub(self):
        from datasets import load_dataset

        return load_dataset(self.location, split=self.split, streaming=True)


_CUT = re.compile(r"(?<=\S) (?=[^\W\d_])")  # a space between a non-space and a letter


def _pieces(path: Path, size: int = 1 << 16) -> Iterator[str]:
    """A text file in pieces of about ``size`` characters, cut before a space that starts a word."""
    with open(path, encoding="utf-8", errors="replace") as f:
        buf = ""
        while chunk := f.read(size):
            buf += chunk
            cut = None
            for m in _CUT.finditer(buf, max(0, len(buf) - size // 2)):
                cut = m.start()
            if cut is None and len(buf) > 8 * size:  # no word start at all: cut anyway
                cut = len(buf)
            if cut:
                yield buf[:cut]
                buf = buf[cut:]
        if buf:
            yield buf


def _stream_files(kind: str, files: list[str]):
    from datasets import load_dataset

    options = {"chunksize": 1 << 20} if kind == "json" else {}  # bytes parsed at a time
    return load_dataset(kind, data_files=files, split="train", streaming=True, **options)


def _files(path: Path, kind: str) -> list[str]:
    suffixes = FILE_KINDS[kind]
    if path.is_file():
        return [str(path)]
    return sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def _kind_of_files(location: str, path: Path) -> str:
    """The kind of the file ``path``, or of the files in the directory ``path``; refuse several
    kinds, as all but one would be skipped (README files aside: a JSON or Parquet source skips them)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    found = {}  # kind -> its first file
    for f in [f for f in files if not f.name.upper().startswith("README.")] or files:
        kind = next((k for k, suffixes in FILE_KINDS.items() if f.name.endswith(suffixes)), None)
        if kind is not None:
            found.setdefault(kind, f)
    if not found:
        raise ValueError(f"source {location!r}: no readable files; valid choices: {KINDS}")
    if len(found) > 1:
        kinds = " and ".join(f"{KIND_NAMES[k]} ({f})" for k, f in found.items())
        raise ValueError(f"source {location!r}: mixes {kinds} files; only one kind would be read: "
                         f"give a directory of one kind")
    return next(iter(found))


def open_source(location: str, column: str = "text", split: str = "train") -> Source:
    """Recognise what ``location`` is and check that it holds the text ``column``."""
    path = Path(location).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        src = Source("saved", str(path), column, split)
    elif path.exists():
        src = Source(_kind_of_files(location, path), str(path), column, split)
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", location) and not location.endswith(
            TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES):
        src = Source("hub", location, column, split)  # a hub name; needs the network
    else:
        raise ValueError(f"source {location!r}: no such file or directory; valid choices: {KINDS}")
    if src.kind in ("text", "json", "parquet") and split != "train":
        raise ValueError(f"--split: {split!r} chooses a split of a save_to_disk directory or a hub "
                         f"dataset; {location} is {src.kind} files, read whole")
    if src.kind == "text":
        for f in _files(path, "text"):
            check_utf8(f, f"source {location!r}")  # as data=text does: not read as U+FFFD or NULs
    columns = src.columns()
    if src.kind != "text" and column not in columns:
        raise ValueError(f"--column: {column!r} is not a column of {location}; "
                         f"valid choices: {', '.join(columns) or '(none: the source is empty)'}")
    if not columns[column]:  # numbers or lists: tokenizing them crashed in the workers
        texts = [name for name, is_text in columns.items() if is_text]
        raise ValueError(f"--column: {column!r} of {location} does not hold text; "
                         f"valid choices: {', '.join(texts) or '(none: no text column)'}")
    return src
