"""Bad checkpoints given to generate.py, evaluate.py and train.py ckpt_path=: refused in one line,
loaded with weights_only=True only, and never allowed to name a class outside lmlab."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from lmlab.checkpoint import check_targets, load_model, read_checkpoint
from lmlab.errors import UserError
from tests.conftest import ROOT
from tests.test_errors_config import refused
from tests.test_train_cli import FAST, run

SHORT = [o for o in FAST if not o.startswith(("trainer.max_steps", "trainer.val_check"))] + [
    "trainer.max_steps=2", "trainer.val_check_interval=2", "sample.max_new_tokens=0"]




class RunsAShellCommand:
    """Pickles as a call of os.system: what a malicious checkpoint would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("script", ["generate.py", "train.py"])  # evaluate.py: see the pickle test
def test_missing_checkpoint(script, tmp_path):
    extra = SHORT if script == "train.py" else []
    proc = run(script, *extra, f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path / 'r'}",
               f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert refused(proc) == f"lmlab: error: ckpt_path: no such checkpoint: {tmp_path / 'nope.ckpt'}"


def test_a_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match=f"^ckpt_path: {tmp_path} is a directory, not a checkpoint "
                                        "file; it holds last.ckpt$"):
        load_model(tmp_path, "cpu")
    hf = tmp_path / "hf"  # what transformers' save_pretrained writes
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(UserError, match=f"^ckpt_path: {hf} is a directory, not a checkpoint file; a "
                                        f"Hugging Face checkpoint directory\? convert it first: python "
                                        f"scripts/hf_convert.py import {hf} model.ckpt$"):
        load_model(hf, "cpu")


def test_truncated_empty_and_random_files(ckpt, tmp_path):
    data = ckpt.read_bytes()
    bad = {"truncated": data[: len(data) // 2], "empty": b"", "random": os.urandom(1 << 16)}
    for name, content in bad.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        with pytest.raises(UserError) as err:
            load_model(path, "cpu")
        msg = str(err.value)
        assert msg.startswith(f"ckpt_path: cannot read checkpoint {path}: the file is ")
        assert ("empty" if name == "empty" else "truncated or corrupt") in msg and "\n" not in msg


def test_a_pickled_object_is_refused_unexecuted(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "ran"
    state["hyper_parameters"]["payload"] = RunsAShellCommand(marker)
    torch.save(state, tmp_path / "evil.ckpt")
    proc = run("evaluate.py", f"ckpt_path={tmp_path / 'evil.ckpt'}", f"hydra.run.dir={tmp_path / 'e'}",
               check=False)
    line = refused(proc)
    assert "holds a pickled Python object (posix.system)" in line and "weights_only=True" in line
    assert not marker.exists()  # the command never ran


def test_a_foreign_target_in_the_stored_config_is_refused_before_instantiation(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "ran"
    state["hyper_parameters"]["model"]["attention"] = {"_target_": "os.system", "command": f"touch {marker}"}
    torch.save(state, tmp_path / "target.ckpt")
    proc = run("generate.py", f"ckpt_path={tmp_path / 'target.ckpt'}", f"hydra.run.dir={tmp_path / 'g'}",
               check=False)
    assert refused(proc) == ("lmlab: error: checkpoint: model.attention._target_='os.system' is not an "
                             "lmlab class; refusing to build it")
    assert not marker.exists()
    with pytest.raises(UserError, match=r"model.ffn.experts\[0\]._target_='builtins.eval'"):
        check_targets({"ffn": {"experts": [{"_target_": "builtins.eval"}]}})


def test_a_checkpoint_of_another_architecture_names_the_key_and_shapes(ckpt, tmp_path):
    proc = run("train.py", *SHORT, "model.d_model=64", "trainer.max_steps=4", f"ckpt_path={ckpt}",
               f"hydra.run.dir={tmp_path / 'r'}", f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert refused(proc) == ("lmlab: error: checkpoint does not fit the model: model.tok_emb.weight is "
                             "(50257, 32) in the checkpoint, (50257, 64) in the model")
    assert not (tmp_path / "r" / "checkpoints").exists()
    # weights that do not match their own stored config (an edited or mixed-up file)
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["model"]["n_layers"] = 2
    torch.save(state, tmp_path / "mixed.ckpt")
    with pytest.raises(UserError, match=r"^checkpoint does not fit the model: the model's "
                                        r"model\.blocks\.1\..* missing from the checkpoint$"):
        load_model(tmp_path / "mixed.ckpt", "cpu")
    assert read_checkpoint(ckpt)["global_step"] == 2  # the good one still loads


def test_every_load_in_the_source_uses_weights_only():
    """Every torch.load, and every Lightning fit/validate/test given a ckpt_path, passes
    weights_only=True; nothing calls load_from_checkpoint (which cannot be told to)."""
    sources = list((ROOT / "src" / "lmlab").rglob("*.py")) + list((ROOT / "scripts").glob("*.py"))
    calls = 0
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, kwargs = node.func.attr, {k.arg: k.value for k in node.keywords}
            assert name != "load_from_checkpoint", path
            if name == "load" or (name in ("fit", "validate", "test") and "ckpt_path" in kwargs):
                if name == "load" and ast.unparse(node.func.value) != "torch":
                    continue
                calls += 1
                flag = kwargs.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"
    assert calls >= 3  # torch.load in checkpoint.py, fit and validate in training.py


def test_a_checkpoint_naming_a_renamed_class_still_loads(tmp_path):
    """NoPE checkpoints written before issue 9 store `lmlab.model.position.Position`, now the
    position interface; they load as NoPosition, the class that does what Position did."""
    from lmlab.module import LanguageModule
    from lmlab.model.position import NoPosition
    from tests.conftest import TINY, model_cfg

    cfg = model_cfg([*TINY, "model/position=none"])
    module = LanguageModule(model=cfg)
    state = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    state["hyper_parameters"]["model"] = {**cfg, "position": {"_target_": "lmlab.model.position.Position"}}
    torch.save(state, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt", "cpu")
    assert isinstance(loaded.position, NoPosition)
    torch.testing.assert_close(loaded.state_dict(), module.model.state_dict())
