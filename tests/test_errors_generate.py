"""Bad sampling arguments refused in one line (one function, lmlab.validate.check_sampling, used
by generate.py and by the sample at the end of training); the edge cases that are allowed do
what the README says."""

from __future__ import annotations

import logging

import pytest
import torch

from lmlab.cli import generation_args
from lmlab.data.tokenizer import get_tokenizer
from lmlab.errors import UserError
from lmlab.model.transformer import Transformer
from lmlab.sampling import sample_text, sample_tokens
from lmlab.prompts import prompt_texts, stop_strings
from lmlab.validate import check_sampling
from tests.conftest import TINY, compose_cfg, model_cfg
from tests.test_errors_config import refused
from tests.test_train_cli import run


@pytest.mark.parametrize("override, message", [
    ("prompt=", "prompt='': must be non-empty text (prompt='<|endoftext|>' samples unconditionally)"),
    ("top_p=1.5", "top_p=1.5: must be in (0, 1] or null (no nucleus filter)"),
    ("num_samples=0", "num_samples=0: must be an integer >= 1"),
    ("compile=maybe", "compile: unknown 'maybe'; valid choices: true, false, null"),
    ("compile=1", "compile: unknown 1; valid choices: true, false, null"),
    ("stop=5", "stop=5: must be a list of non-empty strings, e.g. 'stop=[\"\\n\\n\"]'"),
    ('stop=["ab",""]', "stop=['ab', '']: must be a list of non-empty strings"),
    ("device=tpu", "device='tpu': unknown; valid choices: auto, cpu, cuda, cuda:<index>, mps"),
    ("tokenizer=gpt4", "tokenizer: unknown tokenizer 'gpt4'; valid choices: gpt2"),
    ('prompts=[ROMEO:,""]', "prompts=['ROMEO:', '']: each prompt must be non-empty text"),
    ("prompts=5", "prompts=5: each prompt must be non-empty text"),  # was a TypeError traceback
    ("seed=1.5", "seed=1.5: must be an integer >= 0"),  # a traceback once the checkpoint was read
])
def test_generate_py_refuses_before_loading_the_checkpoint(override, message, tmp_path):
    """Each argument as generate.py checks it (cli.generation_args), in-process; the checkpoint
    does not exist, so an argument let through would end in its error instead."""
    cfg = compose_cfg([f"ckpt_path={tmp_path / 'none.ckpt'}", override], name="generate")
    with pytest.raises((UserError, ValueError)) as err:
        generation_args(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("prompts=5", "prompts=5: each prompt must be non-empty text"),
    ("compile=1", "compile: unknown 1; valid choices: true, false, null"),
])
def test_generate_py_checks_its_arguments_before_the_checkpoint(override, message, tmp_path):
    # through `python generate.py`: the missing checkpoint is not what is reported
    proc = run("generate.py", f"ckpt_path={tmp_path / 'none.ckpt'}", override,
               f"hydra.run.dir={tmp_path / 'g'}", check=False)
    assert refused(proc).startswith(f"lmlab: error: {message}")


@pytest.mark.parametrize("script", ["generate.py", "evaluate.py"])
def test_no_checkpoint_is_one_line(script, tmp_path):
    proc = run(script, f"hydra.run.dir={tmp_path / 'g'}", check=False)
    assert refused(proc) == (f"lmlab: error: ckpt_path: required, e.g. python {script} "
                             "ckpt_path=outputs/runs/<time>/checkpoints/last.ckpt")


def test_one_stop_string_is_a_list_of_one():
    """stop='\\n\\n' typed without brackets ends at a blank line, not at any newline."""
    assert stop_strings("\n\n") == ["\n\n"] and stop_strings(None) == []
    assert stop_strings(["END", "\n\n"]) == ["END", "\n\n"]


def test_the_readmes_stop_string_is_a_blank_line():
    """'stop=["\\n\\n"]' on a command line reaches the config as backslash-n twice (Hydra does not
    decode it); the stop strings generate.py uses are two newlines."""
    cfg = compose_cfg(["ckpt_path=x", 'stop=["\\n\\n","a\\tb"]'], name="generate")
    assert list(cfg.stop) == ["\\n\\n", "a\\tb"]
    assert stop_strings(cfg.stop) == ["\n\n", "a\tb"]


def test_prompts_typed_on_a_command_line_are_unescaped():
    """prompt="ROMEO:\\n" means what the YAML default means; one string in ``prompts`` is one
    prompt, not a prompt per character."""
    cfg = compose_cfg(["ckpt_path=x", "prompt=ROMEO:\\n"], name="generate")
    assert cfg.prompt == "ROMEO:\\n" and prompt_texts(cfg.prompt, cfg.prompts) == ["ROMEO:\n"]
    cfg = compose_cfg(["ckpt_path=x", 'prompts=["A:\\tB","C\\\\n"]'], name="generate")
    assert prompt_texts(cfg.prompt, cfg.prompts) == ["A:\tB", "C\\n"]
    assert prompt_texts("x", "JULIET:") == ["JULIET:"]


@pytest.mark.parametrize("override, message", [
    ("prompt=null", "prompt=None: must be non-empty text"),  # was sampled after the text 'None'
    ("prompt=[a,b]", "prompt=['a', 'b']: must be non-empty text"),  # after the text "['a', 'b']"
    ("prompts=[]", "prompts=[]: each prompt must be non-empty text"),  # was the one prompt instead
    ("prompts={a:1}", "prompts={'a': 1}: each prompt must be non-empty text"),  # was prompt 'a'
    ("prompts=[[1,2]]", "prompts=[[1, 2]]: each prompt must be non-empty text"),
])
def test_a_prompt_that_is_not_text_is_refused(override, message):
    cfg = compose_cfg(["ckpt_path=x", override], name="generate")
    with pytest.raises(UserError) as err:
        prompt_texts(cfg.prompt, cfg.prompts)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    cfg = compose_cfg(["ckpt_path=x", "prompt=1984", "prompts=null"], name="generate")
    assert prompt_texts(cfg.prompt, cfg.prompts) == ["1984"]  # a number typed is its text


@pytest.mark.parametrize("script, key, suggestion", [
    ("generate.py", "comple=true", "compile"), ("evaluate.py", "splt=val", "split")])
def test_a_misspelt_key_is_refused_in_one_line(script, key, suggestion, tmp_path):
    proc = run(script, f"ckpt_path={tmp_path / 'none.ckpt'}", key, check=False)
    name = key.split("=")[0]
    assert refused(proc).startswith(f"lmlab: error: unknown config key '{name}'; did you mean "
                                    f"'{suggestion}'?")


@pytest.mark.parametrize("script, options", [
    # the default prompt as it is typed (it read 'ROMEO:, a blank line, then a quote)
    ("generate.py", ["compile: null", "max_new_tokens: 200", "top_p: null", "prompt: ROMEO:\\n\n"]),
    ("evaluate.py", ["extrapolate=[1]", "split=auto"])])
def test_help_describes_the_script_itself(script, options):
    out = run(script, "--help").stdout
    assert f"python {script} ckpt_path=PATH" in out and "python train.py" not in out
    assert all(option in out for option in options), out


def test_the_default_prompt_ends_with_a_newline():
    cfg = compose_cfg(["ckpt_path=x"], name="generate")
    assert prompt_texts(cfg.prompt, cfg.prompts) == ["ROMEO:\n"]


@pytest.mark.parametrize("kwargs, message", [
    ({"top_p": 0}, "top_p=0: must be in (0, 1]"),
    ({"top_p": -0.1}, "top_p=-0.1: must be in (0, 1]"),
    ({"top_p": 1.0001}, "top_p=1.0001: must be in (0, 1]"),
    ({"temperature": -1}, "temperature=-1: must be a number >= 0"),
    ({"temperature": "hot"}, "temperature='hot': must be a number >= 0"),
    ({"temperature": float("inf")}, "temperature=inf: must be a number >= 0"),
    ({"max_new_tokens": -1}, "max_new_tokens=-1: must be an integer >= 0"),
    ({"max_new_tokens": 2.5}, "max_new_tokens=2.5: must be an integer >= 0"),
    ({"top_k": -1}, "top_k=-1: must be an integer >= 0 or null"),
    ({"prompt": ""}, "prompt='': must be non-empty text"),
])
def test_bad_sampling_arguments(kwargs, message):
    args = {"max_new_tokens": 10, "temperature": 0.8, "top_k": None, "top_p": None, "prompt": "Hi"}
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        check_sampling("", **{**args, **kwargs})


def test_edge_values_that_are_allowed():
    check_sampling("", max_new_tokens=0, temperature=0, top_k=0, top_p=1.0, prompt="x")
    check_sampling("sample", max_new_tokens=5, temperature=2.0, top_k=None, top_p=1e-9, prompt=None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(model_cfg(TINY)).eval()  # context 16, learned positions


def test_temperature_zero_is_argmax_decoding(model):
    idx = torch.randint(0, 50257, (2, 5))
    greedy = sample_tokens(model, idx, max_new_tokens=20, temperature=0, top_k=3, top_p=0.5,
                           use_cache=False)
    expected = idx
    for _ in range(20):  # plain argmax over the cropped context, no cache
        logits = model(expected[:, -model.context_length:]).logits[:, -1]
        expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, expected)
    # with the KV cache too, while the context has room (past it the cache restarts on half a
    # context, README "Generate and evaluate")
    cached = sample_tokens(model, idx, max_new_tokens=11, temperature=0, top_k=3, top_p=0.5)
    assert torch.equal(cached, expected[:, :16])


def test_zero_new_tokens_returns_the_prompt(model):
    assert sample_text(model, "gpt2", "To be, or not", max_new_tokens=0) == "To be, or not"


def test_a_prompt_longer_than_the_context_is_cropped_with_a_notice(model, caplog):
    prompt = "Now is the winter of our discontent made glorious summer by this sun of York " * 2
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        text = sample_text(model, "gpt2", prompt, max_new_tokens=4, temperature=0)
    assert text.startswith(prompt) and len(text) > len(prompt)
    (notice,) = [r.getMessage() for r in caplog.records]
    n = len(get_tokenizer("gpt2").encode(prompt))
    assert n > 16 and notice == (f"the prompt is {n} tokens, longer than the model's context of 16: the model "
                      "sees only its last 16 tokens")


def test_a_padded_vocabulary_never_samples_an_id_the_tokenizer_lacks():
    """A model whose vocabulary is padded past the tokenizer's (model.vocab_size=50304, which
    training allows) sampled ids GPT-2's tokenizer cannot decode: a KeyError at the end of
    generate.py, or of training's sample. Here ids past 50,257 hold the highest logits."""
    torch.manual_seed(0)
    model = Transformer(model_cfg(TINY + ["model.vocab_size=50304"])).eval()
    with torch.no_grad():
        model.lm_head.weight[50257:] = model.lm_head.weight[:47] * 50
    text = sample_text(model, "gpt2", "ROMEO:", max_new_tokens=8, temperature=1.0, top_k=None)
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_in_one_line(tmp_path):
    """A checkpoint whose vocabulary is smaller than the tokenizer's (an imported model with its
    own tokenizer, here 97 tokens) ended in an IndexError traceback from the embedding."""
    torch.manual_seed(0)
    model = Transformer(model_cfg(TINY + ["model.vocab_size=97"]))
    message = "tokenizer=gpt2 has 50,257 tokens, more than the model's vocab_size=97: the model was not trained with it"
    with pytest.raises(UserError, match=message):
        sample_text(model, "gpt2", "ROMEO:", max_new_tokens=2)
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": {"model": model.cfg},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    proc = run("generate.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'g'}", check=False)
    assert refused(proc) == f"lmlab: error: {message}"


def test_a_cropped_prompts_notice_comes_before_the_streamed_text(tmp_path):
    """generate.py printed the streamed prompt, then the notice that it was cropped (stderr, into
    the middle of the text on a terminal), then the continuation."""
    import subprocess
    import sys

    torch.manual_seed(0)
    model = Transformer(model_cfg(TINY))  # context 16
    torch.save({"hyper_parameters": {"model": model.cfg},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "m.ckpt")
    prompt = ("Now is the winter of our discontent made glorious summer by this sun of York. " * 2).strip()
    code = ("import sys; from lmlab import cli; sys.argv = ['generate.py', *sys.argv[1:]]; cli.generate()")
    proc = subprocess.run([sys.executable, "-c", code, f"ckpt_path={tmp_path / 'm.ckpt'}", f"prompt={prompt}",
                           "max_new_tokens=3", "temperature=0", f"hydra.run.dir={tmp_path / 'g'}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    notice, text = proc.stdout.split("\n", 1)
    assert "longer than the model's context of 16" in notice
    assert text == (tmp_path / "g" / "samples.txt").read_text() + "\n" and text.startswith(prompt)
