"""The manifest of a prepared corpus: written last and atomically, it marks the shards as complete.

``<dir>/manifest.json`` names the tokenizer, its vocabulary size, the token dtype, every shard of
each split (``<dir>/train``, ``<dir>/val``: lmlab.data.shards files) with its token count, the
totals per split, the source and the lmlab version. A directory without a valid manifest, or
whose shards do not have the sizes it lists, is never trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
FORMAT = 2  # format 1 (chunks with an index.json) is no longer read


def write_manifest(out_dir: Path, record: dict) -> dict:
    record = {"format": FORMAT, **record}
    tmp = out_dir / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out_dir / MANIFEST)  # atomic: the manifest is there whole or not at all
    return record


def read_manifest(path: str | Path) -> dict:
    """The manifest of a prepared directory, checked against its shards' sizes; ValueError if the
    directory is not a complete preparation."""
    out_dir = Path(path).expanduser()
    file = out_dir / MANIFEST
    if not file.is_file():
        raise ValueError(f"data.path: {path} is not a prepared corpus (no {MANIFEST}; an interrupted "
                         f"preparation leaves none): run `python scripts/prepare_data.py SOURCE {path}`")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"data.path: {file} is not valid JSON ({err}): prepare it again") from None
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if version != FORMAT:
        raise ValueError(f"data.path: {path} was prepared in format {version}, this "
                         f"lmlab reads format {FORMAT}: prepare it again")
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        shards = manifest["shards"][split]
        for s in shards:
            f = out_dir / split / s["file"]
            size = f.stat().st_size if f.is_file() else None
            if size != s["tokens"] * itemsize:
                raise ValueError(f"data.path: {f} has {size} bytes, the manifest says "
                                 f"{s['tokens']} {manifest['dtype']} tokens: prepare it again")
        if sum(s["tokens"] for s in shards) != manifest["tokens"][split]:
            raise ValueError(f"data.path: the {split} shards of {path} do not add up to the "
                             f"manifest's {manifest['tokens'][split]} tokens: prepare it again")
    return manifest


def check_tokenizer(manifest: dict, tokenizer: str, vocab_size: int, path: str) -> None:
    """Refuse shards made with another tokenizer or a vocabulary the model cannot embed."""
    if manifest["tokenizer"] != tokenizer:
        raise ValueError(f"data.tokenizer: {tokenizer!r} does not match {path}, prepared with "
                         f"{manifest['tokenizer']!r}; set data.tokenizer={manifest['tokenizer']}")
    if manifest["vocab_size"] > vocab_size:
        raise ValueError(f"model.vocab_size: {vocab_size} is smaller than the vocabulary of "
                         f"{path} ({manifest['vocab_size']}, {manifest['tokenizer']})")
