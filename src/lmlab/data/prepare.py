"""Prepare a corpus into token shards: ``python -m lmlab.data.prepare SOURCE OUT_DIR``.

Worker processes (litdata ``optimize``, with its progress bar) each read a unit of the source in
batches of documents, tokenize them and write chunked token shards: ``OUT_DIR/train`` and
``OUT_DIR/val``. Documents are held out by a hash of their text (so the split does not depend on
how the work was divided, and duplicates land in the same split). Each document ends with the
end-of-text token. The manifest is written last; a directory without one is rebuilt from scratch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from lmlab.data.manifest import MANIFEST, SPLITS, read_manifest, split_tokens, write_manifest
from lmlab.data.sources import Source, open_source
from lmlab.data.tokenizer import get_tokenizer


GROUP_CHARS = 1 << 21  # characters tokenized at a time: Python's token lists stay ~100 MB at most


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16 if n_vocab <= 2**16 else np.uint32)


def in_split(text: str, split: str, val_fraction: float) -> bool:
    held_out = zlib.crc32(text.encode("utf-8", "replace")) < val_fraction * 2**32
    return held_out == (split == "val")


class TokenizeUnit:
    """litdata's ``fn``: one unit of the source -> token arrays of one split (a batch at a time)."""

    def __init__(self, source: Source, split: str, val_fraction: float, tokenizer: str):
        self.source, self.split, self.val_fraction, self.tokenizer = source, split, val_fraction, tokenizer

    def __call__(self, unit: tuple):
        enc = get_tokenizer(self.tokenizer)
        dtype = token_dtype(enc.n_vocab)
        for batch in self.source.read(unit):
            kept = [(t, end) for t, end in batch if in_split(t, self.split, self.val_fraction)]
            if not kept:
                continue
            for group in _by_size(kept, GROUP_CHARS):
                ids = enc.encode_ordinary_batch([t for t, _ in group], num_threads=1)
                parts = [np.asarray(i + [enc.eot_token] if end else i, dtype=dtype)
                         for i, (_, end) in zip(ids, group)]
                yield np.concatenate(parts)  # (tokens,) of this group


def _by_size(docs: list[tuple[str, bool]], max_chars: int):
    """Consecutive groups of documents of at most ``max_chars`` characters (or one document)."""
    group, size = [], 0
    for doc in docs:
        if group and size + len(doc[0]) > max_chars:
            yield group
            group, size = [], 0
        group.append(doc)
        size += len(doc[0])
    if group:
        yield group


def prepare(source: str, out_dir: str, column: str = "text", tokenizer: str = "gpt2",
            val_fraction: float = 0.0005, workers: int = 1, split: str = "train",
            chunk_bytes: str = "16MB", overwrite: bool = False) -> dict:
    """Tokenize ``source`` into ``out_dir``; return the manifest."""
    from litdata import TokensLoader, optimize

    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction: {val_fraction} is not between 0 and 1 (exclusive)")
    if workers < 1:
        raise ValueError(f"--workers: {workers} must be at least 1")
    enc = get_tokenizer(tokenizer)  # unknown names fail here, before any work
    out = Path(out_dir).expanduser().resolve()
    if (out / MANIFEST).exists() and not overwrite:
        try:
            read_manifest(out)
            raise ValueError(f"OUT_DIR: {out_dir} already holds a prepared corpus; pass "
                             f"--overwrite to rebuild it")
        except ValueError as err:
            if "already holds" in str(err):
                raise
    src = open_source(source, column, split)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on, the directory is not trusted
    for s in SPLITS:
        shutil.rmtree(out / s, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    units = src.units(workers)
    if not units:
        raise ValueError(f"source {source!r}: empty corpus (no documents)")
    t0 = time.perf_counter()
    for s in SPLITS:
        optimize(fn=TokenizeUnit(src, s, val_fraction, tokenizer), inputs=units,
                 output_dir=str(out / s), num_workers=min(workers, len(units)),
                 chunk_bytes=chunk_bytes, item_loader=TokensLoader(), reorder_files=False,
                 start_method="fork", verbose=True)
    tokens = {s: _tokens_or_zero(out / s) for s in SPLITS}
    if tokens["train"] == 0:
        raise ValueError(f"source {source!r}: empty corpus (no text in column {column!r})")
    if tokens["val"] == 0:
        raise ValueError(f"--val-fraction: no document of {source!r} fell in the held-out "
                         f"{val_fraction}; raise --val-fraction")
    from lmlab import __version__

    manifest = {"source": str(source), "kind": src.kind, "column": column, "tokenizer": tokenizer,
                "vocab_size": enc.n_vocab, "eot_token": enc.eot_token,
                "dtype": token_dtype(enc.n_vocab).name, "val_fraction": val_fraction,
                "tokens": tokens, "seconds": round(time.perf_counter() - t0, 2),
                "lmlab_version": __version__}
    return write_manifest(out, manifest)


def _tokens_or_zero(split_dir: Path) -> int:
    try:
        return split_tokens(split_dir)
    except (OSError, ValueError, KeyError):
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prepare_data", description=__doc__.split("\n")[0])
    p.add_argument("source", help="text file(s) or dir, JSONL, Parquet, a save_to_disk dir, or a hub name")
    p.add_argument("out_dir", help="where the shards and manifest.json go")
    p.add_argument("--column", default="text", help="the text column (JSONL, Parquet, datasets)")
    p.add_argument("--split", default="train", help="the split of a dataset dict or hub dataset")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--val-fraction", type=float, default=0.0005, help="share of documents held out")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--chunk-bytes", default="16MB",
                   help="size of each shard file; a worker holds about 4x this in memory")
    p.add_argument("--overwrite", action="store_true", help="rebuild a complete preparation")
    a = p.parse_args(argv)
    try:
        m = prepare(a.source, a.out_dir, a.column, a.tokenizer, a.val_fraction, a.workers,
                    a.split, a.chunk_bytes, a.overwrite)
    except (ValueError, FileNotFoundError) as err:
        print(f"lmlab: error: {err}", file=sys.stderr)
        return 2
    print(f"prepared {a.out_dir}: {m['tokens']['train']:,} train and {m['tokens']['val']:,} val "
          f"tokens ({m['tokenizer']}, {m['dtype']}) in {m['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
