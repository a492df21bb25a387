"""The tokenizer of a Hugging Face export: GPT-2's BPE as transformers' tokenizer, with lmlab's
ids; none, said in one line, where it cannot be written; hf_convert's choice of tokenizer."""

import pytest
import torch

from lmlab.interop.hf import export_hf
from lmlab.model import Transformer
from tests.conftest import TINY, model_cfg

transformers = pytest.importorskip("transformers")

VOCAB = 96


TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
         "naïve café — 日本語, emoji 🤖🎭 and Ünïcödé", "end<|endoftext|>next <|endoftext|><|endoftext|>",
         "  leading spaces,\ttabs and trailing   ", "3.14159, 1,000,000 and 2026-12-05; I'll they're",
         " ROMEO", ""]


@pytest.mark.parametrize("overrides", [["model=tiny"], ["model=llama"]])
def test_an_export_holds_gpt2s_tokenizer(overrides, tmp_path, caplog):
    """AutoTokenizer loads the export directory (it loaded nothing: no tokenizer files) and gives
    lmlab's ids (tiktoken's GPT-2 BPE, special tokens allowed as generate.py's prompts allow
    them) for Shakespeare, unicode, <|endoftext|>, spaces and numbers, and their text back; its
    eos and bos are the config's; transformers' pipeline generates lmlab's greedy text."""
    import logging

    from lmlab.data.tokenizer import get_tokenizer
    from lmlab.sampling import sample_text

    torch.manual_seed(0)
    model = Transformer(model_cfg(overrides + TINY)).eval()  # the full 50,257-token vocabulary
    with caplog.at_level(logging.INFO, logger="lmlab"):
        export_hf(model, tmp_path)
    (line,) = caplog.messages  # transformers 5 writes tokenizer.json and tokenizer_config.json, 4 more
    assert line.startswith(f"tokenizer: gpt2 written to {tmp_path} (") and "tokenizer.json" in line
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    enc = get_tokenizer("gpt2")
    for text in TEXTS:
        ids = enc.encode(text, allowed_special="all")
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == text
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert tok.eos_token_id == config.eos_token_id == 50256
    assert tok.bos_token_id == config.bos_token_id  # GPT-2's config: 50256; Llama's: None
    assert tok.model_max_length == model.context_length == 16
    if overrides == ["model=llama"]:  # the tokenizer's class is named in its files, not Llama's
        pipe = transformers.pipeline("text-generation", model=str(tmp_path), device="cpu")
        text = pipe("ROMEO:", max_new_tokens=6, do_sample=False)[0]["generated_text"]
        assert text == sample_text(model, "gpt2", "ROMEO:", max_new_tokens=6, temperature=0)


def test_an_export_without_a_tokenizer_says_why(tmp_path, caplog, monkeypatch):
    """None asked, another tiktoken encoding, a vocabulary smaller than GPT-2's, or transformers
    missing: no tokenizer files, one log line saying why; an unknown name is refused first."""
    import logging
    import sys

    full = Transformer(model_cfg(["model=tiny"] + TINY))
    small = Transformer(model_cfg(["model=tiny"] + TINY + [f"model.vocab_size={VOCAB}"]))
    cases = [(full, None, "tokenizer=None"),
             (full, "cl100k_base", "cl100k_base is a tiktoken encoding whose Hugging Face files lmlab cannot write"),
             (small, "gpt2", f"gpt2 has 50,257 tokens, more than the model's vocab_size={VOCAB}"),
             (full, "gpt2", "transformers is not installed")]
    for i, (model, name, why) in enumerate(cases):
        if i == 3:
            monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lmlab"):
            export_hf(model, tmp_path / str(i), tokenizer=name)
        assert sorted(p.name for p in (tmp_path / str(i)).iterdir()) == ["config.json", "model.safetensors"]
        (line,) = caplog.messages
        assert line.startswith(f"tokenizer: no tokenizer files written to {tmp_path / str(i)}: {why}"), line
    with pytest.raises(ValueError, match="tokenizer: unknown 'gtp2'; valid choices: cl100k_base, gpt2, .*, or none$"):
        export_hf(full, tmp_path / "x", tokenizer="gtp2")
    assert not (tmp_path / "x").exists()


def convert_script():
    """scripts/hf_convert.py as a module."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("hf_convert", ROOT / "scripts" / "hf_convert.py")
    hf_convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hf_convert)
    return hf_convert


def test_the_convert_script_exports_the_runs_tokenizer(tmp_path):
    """hf_convert export: --tokenizer, else the data.tokenizer of the run that wrote the
    checkpoint (<run>/.hydra/config.yaml beside <run>/checkpoints/), else gpt2 for a GPT-2-sized
    vocabulary and none for another (an imported Llama 3's 128,256 tokens: GPT-2's files fit
    its embedding but are not its tokenizer)."""
    hf_convert = convert_script()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert hf_convert.export_tokenizer(None, ckpt, 50257) == "gpt2"  # no run directory
    assert hf_convert.export_tokenizer(None, ckpt, 50304) == "gpt2"  # padded to a multiple of 64
    assert hf_convert.export_tokenizer(None, ckpt, 128256) is None
    assert hf_convert.export_tokenizer("gpt2", ckpt, 128256) == "gpt2"
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("data:\n  tokenizer: cl100k_base\n")
    assert hf_convert.export_tokenizer(None, ckpt, 100277) == "cl100k_base"
    assert hf_convert.export_tokenizer("none", ckpt, 50257) is None
    assert hf_convert.export_tokenizer("gpt2", ckpt, 50257) == "gpt2"


def test_the_convert_script_refuses_an_unknown_tokenizer_before_reading_the_checkpoint(tmp_path, capsys):
    """--tokenizer gtp2 is named in one line before the checkpoint is read (here there is none to
    read, and its error is not the one shown), as a bad destination is."""
    hf_convert = convert_script()
    argv = ["export", str(tmp_path / "none.ckpt"), str(tmp_path / "out"), "--tokenizer", "gtp2"]
    assert hf_convert.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("hf_convert: error: tokenizer: unknown 'gtp2'; valid choices: ") and line.endswith(", or none")
    assert not (tmp_path / "out").exists()
