"""Prepare a corpus into token shards: ``python -m lmlab.data.prepare SOURCE OUT_DIR``.

Worker processes (a multiprocessing pool, with a tqdm progress bar over the units) each read one
unit of the source (a file, a row range, a hub shard) in batches of documents, tokenize them and
append the tokens to their own shard files, ``OUT_DIR/<split>/shard-<unit>-<k>.bin``
(lmlab.data.shards). Documents are held out by a hash of their text (so the split does not depend
on how the work was divided, and duplicates land in the same split). Each document ends with the
end-of-text token. The manifest, listing every shard, is written last; a directory without one is
rebuilt from scratch.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmlab.data.manifest import MANIFEST, SPLITS, read_manifest, write_manifest
from lmlab.data.out_dir import check_only_ours, check_source_outside, clear
from lmlab.data.shards import ShardWriter, token_dtype
from lmlab.data.sources import Source, open_source
from lmlab.data.tokenizer import get_tokenizer

GROUP_CHARS = 1 << 21  # characters tokenized at a time: Python's token lists stay ~100 MB at most


def split_of(text: str, val_fraction: float) -> str:
    """``val`` for the documents whose CRC32 falls under ``val_fraction`` of its range."""
    return "val" if zlib.crc32(text.encode("utf-8", "replace")) < val_fraction * 2**32 else "train"


class TokenizeUnit:
    """A worker's job: one unit of the source -> its shards of both splits. Returns
    ``[(split, file name, tokens), ...]``."""

    def __init__(self, source: Source, out: Path, val_fraction: float, tokenizer: str,
                 shard_tokens: int):
        self.source, self.out, self.val_fraction = source, out, val_fraction
        self.tokenizer, self.shard_tokens = tokenizer, shard_tokens

    def __call__(self, job: tuple[int, tuple]) -> list[tuple[str, str, int]]:
        index, unit = job
        enc = get_tokenizer(self.tokenizer)
        writers = {s: ShardWriter(self.out / s, f"shard-{index:05d}", token_dtype(enc.n_vocab),
                                  self.shard_tokens) for s in SPLITS}
        current = None  # the split of a document read in pieces (text files), from its first piece
        for batch in self.source.read(unit):
            docs: dict[str, list[tuple[str, bool]]] = {s: [] for s in SPLITS}
            for text, ends in batch:
                split = current or split_of(text, self.val_fraction)
                docs[split].append((text, ends))
                current = None if ends else split
            for split, kept in docs.items():
                for group in _by_size(kept, GROUP_CHARS):
                    ids = enc.encode_ordinary_batch([t for t, _ in group], num_threads=1)
                    writers[split].write(np.concatenate(
                        [np.asarray(i + [enc.eot_token] if end else i, dtype=np.int64)
                         for i, (_, end) in zip(ids, group)]))  # (tokens,) of this group
        return [(s, name, n) for s, w in writers.items() for name, n in w.close()]


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


def run_units(job: TokenizeUnit, units: list[tuple], workers: int) -> list[tuple[str, str, int]]:
    """Every unit through ``job``, on ``workers`` processes (forked) or in this one; shards in
    unit order whatever order the workers finish in."""
    jobs = list(enumerate(units))
    bar = dict(total=len(jobs), unit="unit", desc="tokenizing", file=sys.stderr)
    if workers == 1:
        results = [job(j) for j in tqdm(jobs, **bar)]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap(job, jobs), **bar))
    return [shard for unit in results for shard in unit]


def prepare(source: str, out_dir: str, column: str = "text", tokenizer: str = "gpt2",
            val_fraction: float = 0.0005, workers: int = 1, split: str = "train",
            shard_mb: float = 64, overwrite: bool = False) -> dict:
    """Tokenize ``source`` into ``out_dir``; return the manifest."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction: {val_fraction} is not between 0 and 1 (exclusive)")
    if workers < 1:
        raise ValueError(f"--workers: {workers} must be at least 1")
    if shard_mb <= 0:
        raise ValueError(f"--shard-mb: {shard_mb} must be positive")
    enc = get_tokenizer(tokenizer)  # unknown names fail here, before any work
    dtype = token_dtype(enc.n_vocab)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR: {out_dir} is a file, not a directory")
    check_source_outside(source, out, out_dir)
    check_only_ours(out, out_dir)  # a manifest or split directory of the user's is refused
    if (out / MANIFEST).exists() and not overwrite:
        try:
            read_manifest(out)
        except ValueError:
            pass  # not a valid preparation: rebuilt below
        else:
            raise ValueError(f"OUT_DIR: {out_dir} already holds a prepared corpus; pass "
                             f"--overwrite to rebuild it")
    src = open_source(source, column, split)
    units = src.units(workers)
    if not units:
        raise ValueError(f"source {source!r}: empty corpus (no documents)")
    check_not_one_text_file(src, units, source)
    clear(out, out_dir)  # a previous preparation's files only; anything else is refused
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    job = TokenizeUnit(src, out, val_fraction, tokenizer, int(shard_mb * 2**20) // dtype.itemsize)
    shards = {s: [] for s in SPLITS}
    for s, name, n in run_units(job, units, min(workers, len(units))):
        shards[s].append({"file": name, "tokens": n})
    tokens = {s: sum(f["tokens"] for f in shards[s]) for s in SPLITS}
    if tokens["train"] == 0 and tokens["val"] > 0:
        raise ValueError(f"--val-fraction: every document of {source!r} fell in the held-out "
                         f"{val_fraction}; lower --val-fraction or give more documents")
    if tokens["train"] == 0:
        raise ValueError(f"source {source!r}: empty corpus (no text in column {column!r})")
    if tokens["val"] == 0:
        raise ValueError(f"--val-fraction: no document of {source!r} fell in the held-out "
                         f"{val_fraction}; raise --val-fraction")
    from lmlab import __version__

    manifest = {"source": str(source), "kind": src.kind, "column": column, "tokenizer": tokenizer,
                "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "dtype": dtype.name,
                "val_fraction": val_fraction, "tokens": tokens, "shards": shards,
                "seconds": round(time.perf_counter() - t0, 2), "lmlab_version": __version__}
    return write_manifest(out, manifest)


def check_not_one_text_file(src: Source, units: list[tuple], source: str) -> None:
    """Refuse a lone non-empty text file before any work: it is one document, and documents are
    held out whole, so it cannot be split into train and val."""
    if src.kind == "text" and len(units) == 1 and Path(units[0][0]).stat().st_size > 0:
        raise ValueError(f"source {source!r}: one text file is one document, which cannot be "
                         f"split into train and val (documents are held out whole); give more "
                         f"documents: a directory of text files, or JSONL with one per line")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prepare_data", description=__doc__.split("\n")[0])
    p.add_argument("source", help="text file(s) or dir, JSONL, Parquet, a save_to_disk dir, or a hub name")
    p.add_argument("out_dir", help="where the shards and manifest.json go")
    p.add_argument("--column", default="text", help="the text column (JSONL, Parquet, datasets)")
    p.add_argument("--split", default="train", help="the split of a dataset dict or hub dataset")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--val-fraction", type=float, default=0.0005, help="share of documents held out")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--shard-mb", type=float, default=64,
                   help="size of each shard file (written as it grows, never held in memory)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a complete preparation")
    a = p.parse_args(argv)
    try:
        m = prepare(a.source, a.out_dir, a.column, a.tokenizer, a.val_fraction, a.workers,
                    a.split, a.shard_mb, a.overwrite)
    except (ValueError, FileNotFoundError) as err:
        print(f"lmlab: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the hub unreachable, a file unreadable
        print(f"lmlab: error: source {a.source!r}: cannot be read ({type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''})", file=sys.stderr)
        return 1
    print(f"prepared {a.out_dir}: {m['tokens']['train']:,} train and {m['tokens']['val']:,} val "
          f"tokens ({m['tokenizer']}, {m['dtype']}) in {m['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
