import numpy as np
import torch
import pytest

from lmlab.data.corpus import markdown_to_text, shakespeare_plays
from lmlab.data.datamodule import TokenDataModule
from lmlab.data.fixed_windows import FixedWindows
from lmlab.data.window_stream import ResumableLoader, WindowBatches
from lmlab.data.tokenizer import get_tokenizer


def test_markdown_is_stripped_to_play_text():
    md = "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \nNay, answer me.\n"
    text = markdown_to_text(md)
    assert text == "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO:\nWho's there?\nNay, answer me.\n"


def test_the_bundled_corpus_is_all_38_plays_without_markup():
    plays = shakespeare_plays()
    assert len(plays) == 38 and "hamlet" in plays and "the-tempest" in plays
    assert "To be, or not to be" in plays["hamlet"]
    assert not any("**" in t or "\n#" in t for t in plays.values())


def test_split_by_whole_plays_and_cache_reuse(cache_dir):
    dm = TokenDataModule(val_docs=["hamlet"], context_length=32, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup()
    enc = get_tokenizer("gpt2")
    hamlet = enc.encode_ordinary(shakespeare_plays()["hamlet"]) + [enc.eot_token]
    assert dm.val_tokens.tolist() == hamlet  # validation is exactly the held-out play
    assert len(dm.train_tokens) > 1_000_000
    mtime = dm.token_files["train"].stat().st_mtime_ns
    again = TokenDataModule(val_docs=["hamlet"], context_length=32, cache_dir=str(cache_dir))
    again.prepare_data()
    assert again.token_files == dm.token_files
    assert again.token_files["train"].stat().st_mtime_ns == mtime  # reused, not rewritten


def test_a_different_split_or_tokenizer_gets_its_own_cache(cache_dir, tmp_path):
    a = TokenDataModule(val_docs=["hamlet"], cache_dir=str(cache_dir))
    b = TokenDataModule(val_docs=["macbeth"], cache_dir=str(cache_dir))
    a.prepare_data(), b.prepare_data()
    assert a.token_files["val"] != b.token_files["val"]
    f = tmp_path / "t.txt"
    f.write_text("to be or not to be " * 200)
    c = TokenDataModule(source="text", path=str(f), cache_dir=str(cache_dir))
    c.prepare_data()
    f.write_text("that is the question " * 200)
    d = TokenDataModule(source="text", path=str(f), cache_dir=str(cache_dir))
    d.prepare_data()
    assert c.token_files["train"] != d.token_files["train"]  # corpus changed: re-tokenized


def test_unknown_held_out_play_names_the_valid_ones(cache_dir):
    dm = TokenDataModule(val_docs=["hamlett"], cache_dir=str(cache_dir))
    with pytest.raises(ValueError, match="hamlett.*valid choices:.*hamlet"):
        dm.prepare_data()


def test_missing_text_file_fails_at_construction():
    with pytest.raises(FileNotFoundError, match="no such file: /missing/file"):
        TokenDataModule(source="text", path="/missing/file")


def test_random_windows_depend_only_on_seed_and_index():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = WindowBatches(tokens, 16, batch_size=4, n_batches=25, seed=3)
    b = WindowBatches(tokens, 16, batch_size=4, n_batches=25, seed=3)
    c = WindowBatches(tokens, 16, batch_size=4, n_batches=25, seed=4)
    assert all(torch.equal(a.batch(i), b.batch(i)) for i in (0, 7, 24))
    assert not torch.equal(a.batch(5), c.batch(5))
    w = a.batch(5)[0]
    assert len(w) == 17 and np.array_equal(np.diff(w.numpy()), np.ones(16))  # contiguous


def test_ranks_split_the_global_batch_and_resume_mid_stream():
    tokens = np.arange(10_000, dtype=np.uint16)
    one = WindowBatches(tokens, 16, batch_size=4, n_batches=10, seed=0)
    ranks = [WindowBatches(tokens, 16, batch_size=2, n_batches=10, seed=0, rank=r, world_size=2)
             for r in (0, 1)]
    for b in range(10):  # two ranks of 2 = one process of 4, window for window
        assert torch.equal(torch.cat([r.batch(b) for r in ranks]), one.batch(b))
    ids = [set(i for b in range(10) for i in r.window_ids(b)) for r in ranks]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 40  # disjoint, none repeated
    resumed = WindowBatches(tokens, 16, batch_size=4, n_batches=10, seed=0, start=6)
    loader = ResumableLoader(resumed)
    assert [x[0, 0] for x in loader] == [one.batch(b)[0, 0] for b in range(6, 10)]
    assert len(list(loader)) == 10  # the next epoch starts at batch 0


def test_validation_windows_are_fixed_and_cover_the_split():
    tokens = np.arange(1000, dtype=np.uint16)
    v = FixedWindows(tokens, 10, max_windows=None)
    assert len(v) == 99 and int(v[98][-1]) == 999  # the last window ends at the last token
    assert v[0].tolist() == list(range(11))
    few = FixedWindows(tokens, 10, max_windows=5)
    assert [int(few[i][0]) for i in range(5)] == [0, 247, 494, 741, 989]
