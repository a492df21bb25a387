"""lmlab <-> Hugging Face transformers: tiny random-weight GPT-2 and Llama checkpoints (built from
small configs, nothing downloaded) give the same logits after import, and again after export."""

import pytest
import torch

from lmlab.interop.hf import export_hf, import_hf, load_hf
from lmlab.model import Transformer
from tests.conftest import TINY, model_cfg

transformers = pytest.importorskip("transformers")

VOCAB, CTX = 96, 16


def _randomise(model, seed=0):
    """Random values everywhere (biases and norm weights too), so that a mapping mistake shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _tokens(n=2, t=CTX, seed=1):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _hf_logits(model, idx):
    with torch.no_grad():
        return model(input_ids=idx).logits


def _lm_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def gpt2_hf(tied=True, act="gelu_new"):
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CTX, n_embd=32, n_layer=2, n_head=4, activation_function=act,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return _randomise(transformers.GPT2LMHeadModel(cfg).eval())


def llama_hf(tied=False, **kw):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
        rope_theta=500.0, tie_word_embeddings=tied, rms_norm_eps=1e-5, **kw,
    )
    torch.manual_seed(0)
    return _randomise(transformers.LlamaForCausalLM(cfg).eval())


@pytest.mark.parametrize("make", [
    pytest.param(lambda: gpt2_hf(), id="gpt2-tied"),
    pytest.param(lambda: gpt2_hf(tied=False, act="gelu"), id="gpt2-untied-gelu"),
    pytest.param(lambda: llama_hf(), id="llama-gqa-rope"),
    pytest.param(lambda: llama_hf(tied=True, attention_bias=True, mlp_bias=True), id="llama-tied-bias"),
    pytest.param(lambda: llama_hf(rope_scaling={"rope_type": "linear", "factor": 2.0}), id="llama-linear-rope"),
    # biases on attention or the MLP alone were refused: lmlab's model.bias, the others zero
    pytest.param(lambda: llama_hf(attention_bias=True), id="llama-attention-bias"),
    pytest.param(lambda: llama_hf(mlp_bias=True), id="llama-mlp-bias"),
])
def test_import_then_export_keeps_the_logits(make, tmp_path):
    hf = make()
    hf.save_pretrained(tmp_path / "hf")
    idx = _tokens()
    want = _hf_logits(hf, idx)

    model = import_hf(tmp_path / "hf")
    assert isinstance(model, Transformer)
    torch.testing.assert_close(_lm_logits(model, idx), want, atol=1e-5, rtol=1e-5)

    export_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(hf)
    torch.testing.assert_close(_hf_logits(back, idx), want, atol=1e-5, rtol=1e-5)


def test_gqa_import_config_names_the_components(tmp_path):
    llama_hf().save_pretrained(tmp_path)
    cfg, state = load_hf(tmp_path)
    assert cfg["attention"]["n_kv_heads"] == 2 and cfg["position"]["base"] == 500.0
    assert cfg["ffn"]["_target_"].endswith("SwiGLU") and cfg["norm"]["_target_"].endswith("RMSNorm")
    assert state["blocks.0.attn.k.weight"].shape == (16, 32)  # 2 kv heads of 8


@pytest.mark.parametrize("overrides", [["model=llama"], ["model=tiny", "model.attention.qkv_bias=false"]])
def test_lmlab_presets_export_and_load_in_transformers(overrides, tmp_path):
    torch.manual_seed(0)
    model = Transformer(model_cfg(overrides + TINY + [f"model.vocab_size={VOCAB}"])).eval()
    _randomise(model)
    export_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    idx = _tokens()
    torch.testing.assert_close(_hf_logits(hf, idx), _lm_logits(model, idx), atol=1e-5, rtol=1e-5)


def test_qkv_biases_alone_come_back_as_they_went(tmp_path):
    """model.attention.qkv_bias=true without model.bias (Qwen's biases) exports as Llama's
    attention_bias with a zero o_proj bias; importing that export was refused (attention_bias !=
    mlp_bias) and now gives the same model back."""
    torch.manual_seed(0)
    model = Transformer(model_cfg(["model=llama", "model.attention.qkv_bias=true"] + TINY +
                                  [f"model.vocab_size={VOCAB}"])).eval()
    _randomise(model)
    export_hf(model, tmp_path)
    back = import_hf(tmp_path)
    assert back.cfg["bias"] is False and back.cfg["attention"]["qkv_bias"] is True
    assert back.state_dict().keys() == model.state_dict().keys()
    idx = _tokens()
    torch.testing.assert_close(_lm_logits(back, idx), _lm_logits(model, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [["model=llama"], ["model=tiny"]])
def test_an_export_stops_generating_at_end_of_text(overrides, tmp_path):
    """transformers' generate() stops where lmlab's sampling does: at GPT-2's <|endoftext|>."""
    export_hf(Transformer(model_cfg(overrides + TINY)), tmp_path)  # the full 50,257-token vocabulary
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.generation_config.eos_token_id == hf.config.eos_token_id == 50256


@pytest.mark.parametrize("overrides, layout, named", [
    (["model=llama", "model/position=alibi"], "llama", "position ALiBi"),
    (["model=tiny", "model.attention.window=4"], "gpt2", "attention.window=4"),
    (["model=llama", "model.attention.qk_norm=true"], "llama", "qk_norm"),
    (["model=tiny", "model.norm_placement=post"], "gpt2", "norm_placement=post"),
    (["model=llama"], "gpt2", "position RoPE"),
    (["model=tiny", "model/attention=gqa"], "gpt2", "n_kv_heads=2"),
    (["model=llama", "model.position.scaling=ntk", "model.position.factor=2"], "llama", "model.position.scaling=ntk"),
])
def test_variants_without_a_hf_equivalent_are_refused(overrides, layout, named, tmp_path):
    model = Transformer(model_cfg(overrides + TINY + [f"model.vocab_size={VOCAB}"]))
    with pytest.raises(ValueError, match=f"{named}.*no Hugging Face {layout} equivalent"):
        export_hf(model, tmp_path, layout=layout)
    assert not (tmp_path / "config.json").exists()


def test_a_refused_component_names_the_one_the_layout_takes(tmp_path):
    model = Transformer(model_cfg(["model=tiny", "model/ffn=swiglu"] + TINY + [f"model.vocab_size={VOCAB}"]))
    with pytest.raises(ValueError) as err:
        export_hf(model, tmp_path)  # guessed llama from SwiGLU: its learned positions are refused
    assert str(err.value) == ("position Learned has no Hugging Face llama equivalent (llama takes "
                              "position RoPE); cannot export")


def test_convert_script_round_trip_through_an_lmlab_checkpoint(tmp_path, capsys):
    import importlib.util
    import subprocess
    import sys

    from lmlab.interop.hf import load_checkpoint
    from lmlab.module import LanguageModule
    from tests.conftest import ROOT

    script = ROOT / "scripts" / "hf_convert.py"
    spec = importlib.util.spec_from_file_location("hf_convert", script)
    hf_convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hf_convert)

    hf = gpt2_hf()
    hf.save_pretrained(tmp_path / "hf")
    idx = _tokens()
    want = _hf_logits(hf, idx)
    assert hf_convert.main(["import", str(tmp_path / "hf"), str(tmp_path / "m.ckpt")]) == 0
    module = LanguageModule.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu").eval()
    torch.testing.assert_close(_lm_logits(module.model, idx), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_lm_logits(load_checkpoint(tmp_path / "m.ckpt"), idx), want, atol=1e-5, rtol=1e-5)

    capsys.readouterr()
    assert hf_convert.main(["export", str(tmp_path / "m.ckpt"), str(tmp_path / "out")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_hf_logits(back, idx), want, atol=1e-5, rtol=1e-5)
    # imported, it names no tokenizer, and its 96 tokens are not GPT-2's: said on stdout
    assert capsys.readouterr().out.splitlines()[0] == (
        f"hf_convert: {tmp_path / 'm.ckpt'} names no tokenizer (no run directory beside it) and its "
        f"vocab_size={VOCAB} is not GPT-2's; pass --tokenizer to write one")

    # a refused layout, as a user sees it: one line on stderr, exit status 2
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, str(script), "export", str(tmp_path / "m.ckpt"), str(tmp_path / "x"),
                        "--layout", "llama"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "hf_convert: error: position Learned has no Hugging Face llama equivalent" in r.stderr
    # and a checkpoint that is not there: named, not a traceback
    assert hf_convert.main(["export", str(tmp_path / "none.ckpt"), str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
    # a destination of the wrong kind: refused before any weights are read (it was a traceback
    # after the conversion's work)
    (tmp_path / "a_file").write_text("")
    assert hf_convert.main(["import", str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    assert hf_convert.main(["export", str(tmp_path / "m.ckpt"), str(tmp_path / "a_file")]) == 2
    assert "export writes a directory" in capsys.readouterr().err

