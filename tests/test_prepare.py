"""Corpus preparation into lmlab token shards, and training on them (`data=tokens`)."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lmlab.data.corpus import shakespeare_plays
from lmlab.data.manifest import read_manifest
from lmlab.data.prepare import main as prepare_main, prepare
from lmlab.data.tokenizer import get_tokenizer
from lmlab.data.tokens import ShardDataModule, ShardWindowBatches
from lmlab.data.window_stream import ResumableLoader
from tests.conftest import ROOT
from tests.test_resume import logged
from tests.test_train_cli import FAST_ANY_CORPUS, run


@pytest.fixture(scope="module")
def docs():
    """Real text: the paragraphs of four plays, one document each (a few empty ones included)."""
    plays = list(shakespeare_plays().values())[:4]
    return [p for t in plays for p in t.split("\n\n")] + ["", ""]


def expected_tokens(docs):
    enc = get_tokenizer("gpt2")  # one end-of-text token after every non-empty document
    return sum(len(enc.encode_ordinary(d)) + 1 for d in docs if d)


def write_sources(docs, tmp):
    jsonl = tmp / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    parquet = tmp / "c.parquet"
    pq.write_table(pa.table({"content": docs, "n": list(range(len(docs)))}), parquet,
                   row_group_size=500)
    from datasets import Dataset

    saved = tmp / "saved"
    Dataset.from_dict({"text": docs}).save_to_disk(str(saved))
    return {"jsonl": (jsonl, "text"), "parquet": (parquet, "content"), "saved": (saved, "text")}


@pytest.fixture(scope="module")
def prepared(docs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    out = {}
    for name, (src, column) in write_sources(docs, tmp).items():
        out[name] = (tmp / f"out-{name}", prepare(str(src), str(tmp / f"out-{name}"), column=column,
                                                  val_fraction=0.05, workers=2))
    return out


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved"])
def test_token_counts_equal_the_tokenizers_count_over_the_source(prepared, docs, kind):
    out, manifest = prepared[kind]
    assert manifest["tokens"]["train"] + manifest["tokens"]["val"] == expected_tokens(docs)
    assert 0 < manifest["tokens"]["val"] < 0.2 * manifest["tokens"]["train"]
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 50257
    assert read_manifest(out) == manifest  # written whole, agrees with the shards


def test_all_sources_give_the_same_split(prepared):
    tokens = {k: m["tokens"] for k, (_, m) in prepared.items()}
    assert tokens["jsonl"] == tokens["parquet"] == tokens["saved"]  # the split hashes each text


def test_text_files_are_read_in_pieces_with_the_same_tokens(docs, tmp_path):
    enc = get_tokenizer("gpt2")
    texts = ["\n\n".join(docs[i::6]) for i in range(6)]
    (tmp_path / "texts").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "texts" / f"{i}.txt").write_text(t)  # each ~100 KB: several 64 KB pieces
    m = prepare(str(tmp_path / "texts"), str(tmp_path / "out"), val_fraction=0.4)
    counts = [len(enc.encode_ordinary(t)) + 1 for t in texts]
    assert sum(m["tokens"].values()) == sum(counts)
    held_out = {sum(c for i, c in enumerate(counts) if k >> i & 1) for k in range(64)}
    assert m["tokens"]["val"] in held_out  # each file (one document) lies whole in one split


def test_windows_read_back_are_the_sources_tokens(prepared, docs):
    out, _ = prepared["jsonl"]
    dm = ShardDataModule(str(out), context_length=15, batch_size=4, val_windows=None)
    batch = next(iter(dm.val_dataloader()))
    assert batch.shape == (4, 16) and batch.dtype.is_floating_point is False
    enc = get_tokenizer("gpt2")
    stream = np.concatenate([enc.encode_ordinary(d) + [enc.eot_token] for d in docs if d])
    first = batch[0].numpy()  # a window of the held-out split occurs verbatim in the source
    hits = np.flatnonzero(stream == first[0])
    assert any((stream[h : h + 16] == first).all() for h in hits if h + 16 <= len(stream))


def shard_stream(out, seed=0, **kw):
    return ShardDataModule(str(out), context_length=15, batch_size=4, seed=seed, **kw)


def test_two_ranks_take_disjoint_windows_of_each_global_batch(prepared):
    windows = shard_stream(prepared["jsonl"][0]).windows["train"]
    n_batches = len(windows) // 8  # one epoch of global batches of 8
    ranks = [ShardWindowBatches(windows, 4, n_batches, seed=0, rank=r, world_size=2)
             for r in (0, 1)]
    single = ShardWindowBatches(windows, 8, n_batches, seed=0)
    seen = [[j for b in range(n_batches) for j in r.corpus_windows(b)] for r in ranks]
    assert not set(seen[0]) & set(seen[1])  # no window on both ranks
    assert len(set(seen[0] + seen[1])) == n_batches * 8  # none repeats within the epoch
    for b in (0, n_batches - 1):  # 2 ranks of 4 = 1 process of 8, window for window
        assert ranks[0].corpus_windows(b) + ranks[1].corpus_windows(b) == single.corpus_windows(b)
        assert torch.equal(torch.cat([ranks[0].batch(b), ranks[1].batch(b)]), single.batch(b))


def test_the_same_seed_gives_the_same_order_and_a_resume_continues_it(prepared):
    out, _ = prepared["jsonl"]

    def first_batches(seed, done=0, k=4):
        dm = shard_stream(out, seed, train_samples=40)
        dm.load_state_dict({"train_batches": done})  # what a checkpoint restores
        return [b for _, b in zip(range(k), dm.train_dataloader())]

    a, again, other = first_batches(0), first_batches(0), first_batches(1)
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not torch.equal(a[0], other[0])
    loader = shard_stream(out, 0, train_samples=40).train_dataloader()
    assert isinstance(loader, ResumableLoader) and len(loader) == 10
    assert loader.dataset.corpus_windows(0) != [0, 1, 2, 3]  # shuffled, not shard order
    resumed = first_batches(0, done=2, k=2)  # a run resumed after 2 batches goes on with batch 2
    assert torch.equal(resumed[0], a[2]) and torch.equal(resumed[1], a[3])


def test_a_shard_of_the_wrong_size_is_refused(prepared, tmp_path):
    out, manifest = prepared["parquet"]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "train" / manifest["shards"]["train"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])  # one token short
    with pytest.raises(ValueError, match="has .* bytes, the manifest says .*: prepare it again"):
        read_manifest(copy)


@pytest.mark.slow  # ~32 s; training on shards runs by default in test_resume.py
def test_train_a_few_steps_on_shards_and_evaluate(prepared, tmp_path):
    """Training, its length extrapolation and evaluate.py all read the shards (the last two once
    failed on data=tokens: the shard module had no split_tokens, evaluate.py no vocab_size)."""
    out, _ = prepared["parquet"]
    run("train.py", *FAST_ANY_CORPUS, "data=tokens", f"data.path={out}", f"hydra.run.dir={tmp_path / 'r'}",
        "sample.prompt=KING:", "extrapolate=[1,2]")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    vals = [float(r["val/loss"]) for r in csv.DictReader(open(tmp_path / "r" / "csv" / "metrics.csv"))
            if r.get("val/loss")]
    assert metrics["steps"] == 6 and vals[-1] < vals[0]  # it learns
    assert [r["factor"] for r in metrics["extrapolation"]["extrapolation"]] == [1, 2]
    val_tokens = sum(s["tokens"] for s in read_manifest(out)["shards"]["val"])
    run("evaluate.py", f"ckpt_path={metrics['checkpoint']}", "data=tokens", f"data.path={out}",
        f"hydra.run.dir={tmp_path / 'e'}")
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["split"] == "val" and result["tokens"] == val_tokens
    at_trained = metrics["extrapolation"]["extrapolation"][0]  # the best checkpoint, on val
    assert result["loss"] == pytest.approx(at_trained["loss"], rel=1e-4)


@pytest.mark.slow
def test_two_ddp_processes_on_shards_match_one_with_the_same_global_batch(prepared, tmp_path):
    out, _ = prepared["parquet"]
    common = [*FAST_ANY_CORPUS, "data=tokens", f"data.path={out}", "trainer.log_every_n_steps=1",
              "sample.max_new_tokens=0"]
    run("train.py", *common, "data.batch_size=4", f"hydra.run.dir={tmp_path / 'one'}")
    run("train.py", *common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "data.batch_size=2", f"hydra.run.dir={tmp_path / 'two'}", timeout=400)
    one, two = logged(tmp_path / "one", "train/loss"), logged(tmp_path / "two", "train/loss")
    assert sorted(one) == sorted(two) == list(range(6))
    for step in one:  # the same windows; DDP averages two half-batch gradients (summation order)
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one run dir each
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["ShardDataModule"] == {"train_batches": 6}  # the data position, for resuming


def test_clear_errors(prepared, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"body": "x", "id": 1}) + "\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), str(src),
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"lmlab: error: --column: 'text' is not a column of {src}; "
                                   "valid choices: body, id")
    src.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match="empty corpus"):
        prepare(str(src), str(tmp_path / "o"))
    out, _ = prepared["jsonl"]
    with pytest.raises(ValueError, match="data.path: data=tokens needs data.path=<dir>"):
        ShardDataModule(None)
    with pytest.raises(ValueError, match="data.tokenizer: 'r50k_base' does not match .* 'gpt2'"):
        ShardDataModule(str(out), tokenizer="r50k_base")
    with pytest.raises(ValueError, match="model.vocab_size: 1000 is smaller"):
        ShardDataModule(str(out), vocab_size=1000)
    with pytest.raises(ValueError, match="already holds a prepared corpus; pass --overwrite"):
        prepare(str(tmp_path / "c.jsonl"), str(out))


def test_more_clear_errors(tmp_path, capsys):
    """An empty JSONL file (a StopIteration from datasets), an OUT_DIR that is a file (a
    NotADirectoryError), a manifest that is not JSON (an error naming neither file nor key)."""
    empty, a_file = tmp_path / "empty.jsonl", tmp_path / "a_file"
    empty.write_text("")
    a_file.write_text("x")
    assert prepare_main([str(empty), str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("valid choices: (none: the source is empty)")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    assert prepare_main([str(tmp_path / "ok.jsonl"), str(tmp_path / "o"), "--split", "validation"]) == 2
    assert "--split: 'validation' chooses a split of a save_to_disk directory or a hub dataset" in (
        capsys.readouterr().err)  # it was ignored
    assert prepare_main([str(tmp_path / "ok.jsonl"), str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"lmlab: error: OUT_DIR: {a_file} is a file, not a directory"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"^data.path: .*bad/manifest.json is not valid JSON \("):
        read_manifest(tmp_path / "bad")
