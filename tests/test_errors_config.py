"""Bad config values: each refused in one line naming the value and what is allowed, before any
compute (no model built, no checkpoint directory). Hydra's own errors are turned into one line
too, so every refusal below exits with status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lmlab.config import conf_dir
from lmlab.errors import UserError
from lmlab.model import Transformer
from lmlab.overrides import check_argv
from lmlab.validate import check_config
from tests.conftest import compose_cfg, model_cfg, run_entry_point
from tests.test_train_cli import FAST, run


def refused(proc) -> str:
    """The one stderr line of a refused run, after checking its exit status."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmlab: error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("override, message", [
    ("model=nonexistent", "model: unknown 'nonexistent'; valid choices: gpt2, llama, mixtral, tiny, tiny_llama"),
    ("model.d_model=abc", "model.d_model='abc': must be a number (like its default, 256)"),
    ("model.d_model=0", "model.d_model=0: must be an integer >= 1"),
    ("trainer.max_time=10min", "trainer.max_time='10min': must be DD:HH:MM:SS (e.g. 00:00:08:45), "
                               "a dict of days/hours/minutes/seconds (e.g. {minutes:30}), or null"),
    ("seed=-1", "seed=-1: must be an integer >= 0"),
    ("data.test_windows=0", "data.test_windows=0: must be an integer >= 1 or null"),
    ("model.vocab_size=100", "model.vocab_size=100 is smaller than data.tokenizer=gpt2's 50,257 tokens; "
                             "use at least 50257"),
    ("module.lr=${module.nope}", "module.lr: cannot resolve the interpolation: Interpolation key "
                                 "'module.nope' not found"),
    # a traceback after the first steps, and Hydra's several-line instantiate error once the
    # data and model were built
    ("callbacks.model_checkpoint.monitor=val_loss", "callbacks.model_checkpoint.monitor: unknown "
     "'val_loss'; valid choices: val/loss, val/ppl, train/loss, null"),
    ("callbacks.model_checkpoint.save_top_k=-2", "callbacks.model_checkpoint.save_top_k=-2: must be "
     "an integer >= -1"),
])
def test_train_py_refuses_in_one_line_before_compute(override, message, tmp_path):
    """Through `python train.py` as a user runs it: one kind of error each (Hydra's group choice,
    a wrong type, a bad size, an interpolation)."""
    proc = run("train.py", *FAST, override, f"hydra.run.dir={tmp_path / 'r'}",
               f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert refused(proc) == f"lmlab: error: {message}"
    assert "parameters" not in proc.stdout + proc.stderr  # no model was built
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("script, argv", [
    ("train", ["model=nonexistent"]),  # refused before Hydra runs
    ("train", ["trainer.max_steps=0"]),  # refused by validate.check_config, in the job
    ("train", ["module.warmup_steps=500", "trainer.max_steps=400"]),
    ("train", ["model.n_heads=3"]),  # refused by the model's constructor, built on the meta device
    ("train", ["-m", "model.d_model=32,abc"]),  # a typo in a sweep's second arm, before any arm's config check
    ("generate", ["ckpt_path=none.ckpt", "top_p=1.5"]),
    ("train", ["extrapolate=[0]"]),
    ("evaluate", ["ckpt_path=none.ckpt"]),  # refused by load_model, before the data module
])
def test_a_bad_command_line_is_refused_without_loading_lightning(script, argv, tmp_path):
    """Refusals come before Lightning is imported (~3-6 s of a 2-core machine's start-up): the
    entry points import it only for a command line and a config that passed their checks."""
    argv = [*argv, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_entry_point(script, argv, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.startswith("lmlab: error: "), proc.stderr[-2000:]


@pytest.mark.parametrize("override, message", [
    ("split=dev", "split: unknown 'dev'; valid choices: auto, train, val, test, all"),
    ("data.val_windows=0", "data.val_windows=0: must be an integer >= 1 or null"),
    ("data.test_windows=64", "data.test_windows=64: evaluate.py scores data.val_windows windows of "
                             "the split it scores; pass data.val_windows=64"),  # it was ignored
    ("extrapolate=[1,0]", "extrapolate=[1, 0]: must be a list of multiples of the trained context "
                          "(16 tokens), each a window of at least one token, e.g. [1,2,4,8]"),
    # was replaced with the checkpoint's without a word
    ("model.context_length=64", "model.context_length=64: evaluate.py reads it from the checkpoint; "
                                "score other lengths with extrapolate, e.g. extrapolate=[1,2,4,8]"),
])
def test_evaluate_refuses_bad_values_for_a_good_checkpoint_without_loading_lightning(override, message,
                                                                                      tmp_path):
    """A readable checkpoint and a split that does not exist, or a context multiple of zero: named
    before the data module (and Lightning with it) is built."""
    cfg = model_cfg(FAST)
    state = {f"model.{k}": v for k, v in Transformer(cfg).state_dict().items()}
    torch.save({"hyper_parameters": {"model": cfg}, "state_dict": state}, tmp_path / "m.ckpt")
    proc = run_entry_point("evaluate", [f"ckpt_path={tmp_path / 'm.ckpt'}", override,
                                        f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.strip() == f"lmlab: error: {message}"


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nope"], "no such sweep directory: {tmp}/nope"),
    (["{tmp}"], "{tmp} holds no jobs (no <job>/metrics.json): is it a multirun directory?"),
    (["{tmp}", "--extrapolate", "1,x"], "argument --extrapolate: '1,x': must be numbers > 0 separated "
                                        "by commas, multiples of the trained context, e.g. 1,2,4,8"),
    (["{tmp}", "--extrapolate", "0"], "argument --extrapolate: '0': must be numbers > 0"),
])
def test_rescore_refuses_a_bad_command_line_in_one_line(argv, message, tmp_path):
    """python -m lmlab.rescore: a missing or empty sweep directory, or multiples that are not
    numbers > 0, named in argparse's error line (exit status 2) before anything is loaded."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = ("import sys\nfrom lmlab import rescore\ntry:\n    rescore.main(sys.argv[1:])\n"
            "except SystemExit as e:\n    print(e.code, 'lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"python -m lmlab.rescore: error: {message.format(tmp=tmp_path)}"), proc.stderr


def test_report_refuses_a_directory_without_jobs_and_writes_nothing(tmp_path):
    """python -m lmlab.report on a directory that is no sweep: named, and no report.md left there."""
    from lmlab.report import make_report

    (tmp_path / "not_a_job").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no jobs"):
        make_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_job"]


@pytest.mark.parametrize("overrides, message", [
    (["model/position=foo"], "model/position: unknown 'foo'; valid choices: alibi, learned, none, rope, sinusoidal"),
    (["model.bias=maybe"], "model.bias='maybe': must be true or false"),
    (["trainer.max_steps=ten"], "trainer.max_steps='ten': must be a number (like its default, 400)"),
    (["module.betas=0.9"], None),  # a list default takes anything here; the optimizer checks it
    (["model.n_layer=3"], "unknown config key 'model.n_layer'; did you mean 'model.n_layers'?"),
    # Hydra's several lines ending in YAML advice ('override experiment: ablate_norm')
    (["hparams_search=lr_width_optuna"], "hparams_search=lr_width_optuna: hparams_search is not in "
                                         "train.yaml's defaults; add it with +hparams_search=lr_width_optuna"),
    (["-m", "hparams_search=lr_width_optuna"], "hparams_search=lr_width_optuna: hparams_search is not"),
    (["+experiment=ablate_norm"], "+experiment=ablate_norm: experiment is already in train.yaml's "
                                  "defaults; choose it with experiment=ablate_norm"),
    # an AttributeError traceback in the job, and Hydra's 'Cannot merge DictConfig with ListConfig'
    (["model.attention=5"], "model.attention=5: model.attention is a section of keys (n_kv_heads, "
                            "kernel, qkv_bias, qk_norm, window), not one value; set one of them, "
                            "e.g. model.attention.n_kv_heads=..."),
    (["sample=3"], "sample=3: sample is a section of keys (prompt, max_new_tokens"),
    (["module.betas={a:1}"], "module.betas={'a': 1}: must be a list (like its default, [0.9, 0.95])"),
    (["sample=null"], None),  # no sample at the end of training
    (["model=3"], "model: unknown 3; valid choices: gpt2, llama, mixtral, tiny, tiny_llama"),  # a traceback
    (["+x=3", "model={a:1}"], "model: unknown {'a': 1}; valid choices: gpt2"),  # 'add it with +model'
    (["model.attention={kernel:sdpa}"], None),
    (["trainer=fsdp", "trainer.strategy=ddp"], None),  # a Lightning strategy's name
    # `job` was taken for an override: the command line went unchecked, to Hydra's own error
    (["--cfg", "job", "model.n_layer=3"], "unknown config key 'model.n_layer'; did you mean"),
])
def test_command_line_errors_named_before_hydra_runs(overrides, message):
    err = check_argv(conf_dir(), "train", overrides)
    if message is None:
        assert err is None
    else:
        assert err is not None and err.startswith(message), err


def job_cfg(tmp_path, *overrides):
    """A job's config as `python train.py` hands it to the task (no `hydra` node)."""
    return compose_cfg([*FAST, f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                        *overrides])


BAD = [
    (["model.n_heads=3"], "model.d_model=32 is not divisible by model.n_heads=3"),
    (["model.n_heads=4", "model/attention=gqa", "model.attention.n_kv_heads=3"],
     "model.n_heads=4 is not divisible by model.attention.n_kv_heads=3"),
    (["model/ffn=moe", "model.ffn.top_k=9"], "model.ffn.top_k: 9 must be between 1 and model.ffn.n_experts=8"),
    (["model/ffn=moe", "model.ffn.top_k=0"], "model.ffn.top_k: 0 must be between 1 and model.ffn.n_experts=8"),
    (["model/ffn=moe", "model.ffn.eval_capacity_factor=0"],
     "model.ffn.eval_capacity_factor: 0 must be positive or null (dropless)"),
    (["model/position=learned", "model.position.max_positions=8"], "model.position.max_positions=8 is shorter than model.context_length=16"),
    (["model/position=rope", "model.d_model=30", "model.n_heads=2"], "model/position=rope"),
    (["model.d_model=-8"], "model.d_model=-8: must be an integer >= 1"),
    (["model.n_layers=0"], "model.n_layers=0: must be an integer >= 1"),
    (["model.n_heads=0"], "model.n_heads=0: must be an integer >= 1"),
    (["model.context_length=0"], "model.context_length=0: must be an integer >= 1"),
    (["model.vocab_size=0"], "model.vocab_size=0: must be an integer >= 1"),
    (["model.dropout=-0.1"], "model.dropout=-0.1: must be a number >= 0"),
    (["model.d_model=32.5"], "model.d_model=32.5: must be an integer >= 1"),
    (["module.lr=0"], "module.lr=0: must be a number > 0"),
    (["module.lr=-1"], "module.lr=-1: must be a number > 0"),
    (["module.weight_decay=-0.1"], "module.weight_decay=-0.1: must be a number >= 0"),
    (["module.lr=inf"], "module.lr=inf: must be a number > 0"),
    (["module.warmup_steps=-1"], "module.warmup_steps=-1: must be an integer >= 0"),
    (["module.warmup_steps=7"], "module.warmup_steps=7 is longer than the run (trainer.max_steps=6)"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be an integer >= 1"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1: must be an integer >= 1"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.batch_size=-4"], "data.batch_size=-4: must be an integer >= 1"),
    (["data.val_windows=0"], "data.val_windows=0: must be an integer >= 1 or null"),
    # integers Lightning or the data took as they came (1.5 ran; log_every_n_steps=0 logged no
    # training metrics; routing's -1 drew a heat map every step)
    (["data.seed=1.5"], "data.seed=1.5: must be an integer >= 0"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5: must be an integer >= -1 or null"),
    (["trainer.num_sanity_val_steps=1.5"], "trainer.num_sanity_val_steps=1.5: must be an integer >= -1"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0: must be an integer >= 1"),
    (["callbacks.model_checkpoint.save_top_k=1.5"],
     "callbacks.model_checkpoint.save_top_k=1.5: must be an integer >= -1"),
    (["callbacks.model_checkpoint.every_n_train_steps=-5"],
     "callbacks.model_checkpoint.every_n_train_steps=-5: must be an integer >= 0 or null"),
    (["callbacks.model_checkpoint.every_n_train_steps=5", "callbacks.model_checkpoint.save_last=false"],
     "callbacks.model_checkpoint: every_n_train_steps=5 writes last.ckpt, which needs save_last=true"),
    (["callbacks.model_checkpoint.every_n_train_steps=5", "callbacks.model_checkpoint.save_last=link"],
     "every_n_train_steps=5 writes last.ckpt, which needs save_last=true (got save_last=link)"),
    (["model/ffn=moe", "callbacks.routing.every_n_steps=-1"],
     "callbacks.routing.every_n_steps=-1: must be an integer >= 1"),
    # a fraction past 1 held out the text's last part all the same (1.5: its last half)
    (["data.val_fraction=1.5"], "data.val_fraction=1.5: must be a number in (0, 1), e.g. 0.1"),
    (["data.val_fraction=0"], "data.val_fraction=0: must be a number in (0, 1)"),
    (["sample.temperature=-1"], "sample.temperature=-1: must be a number >= 0"),
    (["sample.top_p=0"], "sample.top_p=0: must be in (0, 1]"),
    (["sample.top_p=1.5"], "sample.top_p=1.5: must be in (0, 1]"),
    (["sample.top_k=-5"], "sample.top_k=-5: must be an integer >= 0 or null"),
    (["sample.max_new_tokens=-1"], "sample.max_new_tokens=-1: must be an integer >= 0"),
    (["sample.prompt="], "sample.prompt='': must be non-empty text"),
    (["sample.prompt=null"], "sample.prompt=None: must be non-empty text"),  # crashed after training
    (["sample.prompt=[a]"], "sample.prompt=['a']: must be non-empty text"),
    (["trainer=fsdp", "trainer.accelerator=cpu", "module/optimizer=muon"],
     "module/optimizer=muon with trainer=fsdp: Muon orthogonalizes whole matrices"),
    (["module.optimizer.ns_dtype=half"],
     "module.optimizer.ns_dtype: unknown 'half'; valid choices: auto, bfloat16, float32"),
    (["extrapolate=[0.5,0]"], "extrapolate=[0.5, 0]: must be a list of multiples of the trained context (16 tokens)"),
    (["extrapolate=2"], "extrapolate=2: must be a list of multiples"),
    (["module.lr=${nope}"], "module.lr: cannot resolve the interpolation: Interpolation key 'nope' not found"),
    (["+x=${oc.env:LMLAB_SURELY_UNSET}"], "x: cannot resolve the interpolation"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_refused_by_the_validation_step(overrides, message, tmp_path):
    with pytest.raises(UserError) as err:
        check_config(job_cfg(tmp_path, *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_good_config_passes_and_allocates_nothing(tmp_path):
    check_config(job_cfg(tmp_path, "model=gpt2"))  # 124M parameters: built on the meta device only
    check_config(job_cfg(tmp_path, "sample.max_new_tokens=0", "sample.prompt="))  # no sample, no prompt needed

