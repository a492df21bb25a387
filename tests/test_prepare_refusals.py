"""Sources and OUT_DIRs that prepare_data refuses in one line, before it deletes or writes anything:
it never deletes a file that a preparation did not write."""

from __future__ import annotations

import json
import re

import pytest

from lmlab.data.manifest import read_manifest
from lmlab.data.prepare import main as prepare_main, prepare

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (5 + i % 7)
        for i in range(40)]


def write_jsonl(path, docs=DOCS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def tree(root):
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_source_in_out_dirs_train_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    """The audit's case: the user's data in C/train and C/val, prepared into C (no manifest)."""
    corpus = tmp_path / "C"
    write_jsonl(corpus / "train" / "a.jsonl")
    write_jsonl(corpus / "val" / "v.jsonl", DOCS[:3])
    before = tree(corpus)
    assert prepare_main([str(corpus / "train"), str(corpus), "--val-fraction", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"lmlab: error: source '{corpus / 'train'}' lies in {corpus / 'train'}, which a "
                   f"preparation into {corpus} deletes; choose another OUT_DIR\n")
    assert tree(corpus) == before


@pytest.mark.parametrize("source, out, message", [
    ("C/val/v.jsonl", "C", "source '{source}' lies in {out}/val, which a preparation into {out} "
                           "deletes; choose another OUT_DIR"),
    ("C", "C", "OUT_DIR: {out} is the source; choose an OUT_DIR outside it"),
    ("C", "C/prepared", "OUT_DIR: {out} lies in the source {source}; choose an OUT_DIR outside"),
])
def test_a_source_that_is_or_holds_out_dir_or_lies_in_a_split_is_refused(tmp_path, source, out,
                                                                          message):
    write_jsonl(tmp_path / "C" / "val" / "v.jsonl")
    before = tree(tmp_path)
    source, out = str(tmp_path / source), str(tmp_path / out)
    with pytest.raises(ValueError, match="^" + re.escape(message.format(out=out, source=source))):
        prepare(source, out, val_fraction=0.3)
    assert tree(tmp_path) == before


def leftover(out, *foreign):
    """A killed preparation's shards in ``out`` (no manifest), and ``foreign`` entries beside
    them: ``name`` a file, ``name/`` a directory."""
    for name in ("train/shard-00000-0000.bin", "train/.shard-00000-0001.bin.tmp",
                 "val/shard-00000-0000.bin", *foreign):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if name.endswith("/") else path.write_bytes(b"\1\0" * 8)


@pytest.mark.parametrize("foreign, named", [
    ("train/notes.txt", "train/notes.txt"),
    ("val/sub/", "val/sub"),
    ("val/shard-00000-0000.bin.bak", "val/shard-00000-0000.bin.bak"),
    ("manifest.json", "manifest.json"),  # not JSON: lmlab did not write it
])
def test_a_file_that_no_preparation_writes_is_never_deleted(tmp_path, foreign, named):
    out = tmp_path / "out"
    leftover(out, foreign)
    before = tree(out)
    with pytest.raises(ValueError, match="^" + re.escape(
            f"OUT_DIR: {out} holds {out / named}, which no preparation writes; nothing was "
            f"deleted: choose another OUT_DIR") + "$"):
        prepare(str(write_jsonl(tmp_path / "c.jsonl")), str(out), val_fraction=0.3)
    assert tree(out) == before and (out / named).exists()


def test_a_split_that_is_a_file_or_a_manifest_of_another_tool_is_refused(tmp_path):
    source = str(write_jsonl(tmp_path / "c.jsonl"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train").write_text("the user's")
    with pytest.raises(ValueError, match=f"holds {tmp_path / 'a' / 'train'}, which no preparation"):
        prepare(source, str(tmp_path / "a"), val_fraction=0.3)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"format": 2, "name": "other"}))
    with pytest.raises(ValueError, match=f"holds {tmp_path / 'b' / 'manifest.json'}, which no"):
        prepare(source, str(tmp_path / "b"), val_fraction=0.3)
    assert (tmp_path / "a" / "train").read_text() == "the user's"
    assert (tmp_path / "b" / "manifest.json").exists()


def test_what_a_preparation_wrote_is_rebuilt(tmp_path):
    """A killed preparation's shards, a complete one with --overwrite, and format 1's litdata
    chunks beside its manifest are replaced by the new shards."""
    source = str(write_jsonl(tmp_path / "c.jsonl"))
    out = tmp_path / "out"
    leftover(out)
    m = prepare(source, str(out), val_fraction=0.3)
    written = {f"{s}/{f['file']}" for s in ("train", "val") for f in m["shards"][s]}
    assert set(tree(out)) == written | {"manifest.json"} and read_manifest(out) == m
    assert prepare(source, str(out), val_fraction=0.3, overwrite=True)["tokens"] == m["tokens"]
    (out / "manifest.json").write_text(json.dumps({"format": 1, "tokenizer": "gpt2",
                                                   "lmlab_version": "0.1.0"}))
    for split in ("train", "val"):
        (out / split / "index.json").write_text("{}")
        (out / split / "chunk-0-0.bin").write_bytes(b"\0\0")
    assert prepare(source, str(out), val_fraction=0.3)["tokens"] == m["tokens"]
    assert set(tree(out)) == written | {"manifest.json"}


def test_a_directory_of_several_kinds_of_file_is_refused(tmp_path):
    """One JSONL file and 20 text files: it was prepared as the JSONL alone, silently."""
    source = tmp_path / "mixed"
    write_jsonl(source / "a.jsonl", DOCS[:10])
    for i in range(20):
        (source / "books" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (source / "books" / f"{i:02d}.txt").write_text(DOCS[i])
    with pytest.raises(ValueError, match="^" + re.escape(
            f"source '{source}': mixes JSON ({source / 'a.jsonl'}) and text "
            f"({source / 'books' / '00.txt'}) files; only one kind would be read: give a directory "
            "of one kind") + "$"):
        prepare(str(source), str(tmp_path / "out"), val_fraction=0.3)
    assert not (tmp_path / "out").exists()
    (source / "a.jsonl").unlink()
    (source / "README.md").write_text("About these books.")  # a README is one of the documents
    m = prepare(str(source), str(tmp_path / "out"), val_fraction=0.3)
    assert m["kind"] == "text" and sum(m["tokens"].values()) > 0
    write_jsonl(source / "b.jsonl", DOCS)
    for f in (source / "books").iterdir():
        f.unlink()
    m = prepare(str(source), str(tmp_path / "out2"), val_fraction=0.3)  # a README beside JSONL
    alone = prepare(str(source / "b.jsonl"), str(tmp_path / "out3"), val_fraction=0.3)
    assert m["kind"] == "json" and m["tokens"] == alone["tokens"]  # is skipped, as before


@pytest.mark.parametrize("encoding, byte", [("utf-16", "3: b'\\x00'"), ("latin-1", "3: b'\\xe9'")])
def test_text_that_is_not_utf8_is_refused_as_data_text_refuses_it(tmp_path, encoding, byte):
    """UTF-16 was prepared into tokens of NUL bytes, latin-1 into U+FFFD, silently."""
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text(DOCS[0] + "Caf\u00e9.", encoding="utf-8")
    (books / "b.txt").write_text("Caf\u00e9. " + DOCS[1], encoding=encoding)
    for source in (books, books / "b.txt"):
        with pytest.raises(ValueError, match="^" + re.escape(
                f"source '{source}': {books / 'b.txt'} is not UTF-8 text (byte {byte}); give a "
                "text file") + "$"):
            prepare(str(source), str(tmp_path / "out"), val_fraction=0.3)
    assert not (tmp_path / "out").exists()


def test_a_lone_text_file_is_refused_as_one_document_before_any_work(tmp_path, capsys):
    """It said 'empty corpus (no text in column 'text')' when its one document went to val, and
    'raise --val-fraction' when it went to train."""
    single = tmp_path / "single.txt"
    single.write_text(" ".join(DOCS))
    message = (f"source '{single}': one text file is one document, which cannot be split into "
               "train and val (documents are held out whole); give more documents: a directory "
               "of text files, or JSONL with one per line")
    assert prepare_main([str(single), str(tmp_path / "out"), "--val-fraction", "0.5"]) == 2
    assert capsys.readouterr().err == f"lmlab: error: {message}\n"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        prepare(str(single), str(tmp_path / "out"))  # the default --val-fraction
    (tmp_path / "books").mkdir()
    single.rename(tmp_path / "books" / "single.txt")
    with pytest.raises(ValueError, match="^source '.*books': one text file is one document"):
        prepare(str(tmp_path / "books"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_documents_that_all_fall_in_val_are_not_called_an_empty_corpus(tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", ["alpha beta", "gamma delta", "epsilon zeta"])
    with pytest.raises(ValueError, match=re.escape(
            f"--val-fraction: every document of '{source}' fell in the held-out 0.9999; lower "
            "--val-fraction or give more documents")):
        prepare(str(source), str(tmp_path / "out"), val_fraction=0.9999)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved"])
def test_a_column_that_does_not_hold_text_is_refused_before_the_workers(tmp_path, kind):
    """`--column id` (numbers) crashed each worker with "'int' object has no attribute 'encode'"."""
    rows = {"id": list(range(len(DOCS))), "text": DOCS}
    src = tmp_path / f"src.{kind}"
    if kind == "jsonl":
        src.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(rows), src)
    else:
        from datasets import Dataset

        Dataset.from_dict(rows).save_to_disk(str(src))
    with pytest.raises(ValueError, match=re.escape(f"--column: 'id' of {src} does not hold text; "
                                                   "valid choices: text")):
        prepare(str(src), str(tmp_path / "out"), column="id")
    assert not (tmp_path / "out").exists()
