"""evaluate.py on a small text file of one's own."""

import json

import pytest
import torch

from lmlab import cli
from lmlab.data.tokenizer import get_tokenizer
from lmlab.model import Transformer
from tests.conftest import TINY, compose_cfg, model_cfg


def evaluate(argv: list[str]) -> None:
    """``python evaluate.py ARGV`` in this process (its Hydra job, without Hydra's run)."""
    cli._evaluate.__wrapped__(compose_cfg(argv, name="evaluate"))


def test_a_small_file_is_scored_whole_though_its_last_tenth_holds_no_window(tmp_path, capsys):
    """evaluate.py data=text scores all of the file, so a file of a few windows is enough; it was
    refused because training's val split (its last 10%) was shorter than one window, with advice
    (lower model.context_length) that evaluate.py cannot take. A file shorter than one window is
    refused in one line naming the split it scores."""
    torch.manual_seed(0)
    cfg = model_cfg(TINY)  # context 16
    state = {f"model.{k}": v for k, v in Transformer(cfg).state_dict().items()}
    torch.save({"hyper_parameters": {"model": cfg}, "state_dict": state}, tmp_path / "m.ckpt")
    text = tmp_path / "mine.txt"
    text.write_text("".join(f"Line {i} of mine.\n" for i in range(20)))
    n = len(get_tokenizer("gpt2").encode_ordinary(text.read_text())) + 1  # + end of text
    assert 5 * 17 < n < 10 * 17  # several windows, but a last tenth shorter than one
    argv = [f"ckpt_path={tmp_path / 'm.ckpt'}", "data=text", f"data.path={text}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}"]
    evaluate(argv)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["split"] == "all" and result["tokens"] == n and result["windows"] == (n - 17) // 16 + 1

    text.write_text("Too short.")
    with pytest.raises(SystemExit) as exit_:
        evaluate(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "lmlab: error: the all split has 4 tokens, fewer than one window of 17"


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_in_one_line(tmp_path, capsys):
    """A checkpoint with fewer tokens than data.tokenizer (an import with its own tokenizer) ended
    in an IndexError traceback from the embedding, after the text was tokenized."""
    torch.manual_seed(0)
    cfg = model_cfg(TINY + ["model.vocab_size=97"])
    state = {f"model.{k}": v for k, v in Transformer(cfg).state_dict().items()}
    torch.save({"hyper_parameters": {"model": cfg}, "state_dict": state}, tmp_path / "m.ckpt")
    (tmp_path / "mine.txt").write_text("Some text of mine, " * 20)
    with pytest.raises(SystemExit) as exit_:
        evaluate([f"ckpt_path={tmp_path / 'm.ckpt'}", "data=text", f"data.path={tmp_path / 'mine.txt'}",
                  f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}"])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip() == (
        "lmlab: error: data.tokenizer=gpt2 has 50,257 tokens, more than the model's vocab_size=97: "
        "the model was not trained with it")
