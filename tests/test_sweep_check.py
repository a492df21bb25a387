"""A sweep's arms are checked before the first one trains (lmlab.sweep_check): a bad value in any
arm, or in an experiment preset's grid combined with the command line, is refused in one line
and no job directory is made; an unknown experiment preset is refused, not dropped."""

from __future__ import annotations

import pytest

from lmlab.config import conf_dir
from lmlab.run_record import is_sweep
from lmlab.sweep_check import single_run_note, sweep_arms
from tests.test_errors_config import refused
from tests.test_sweep_cli import train_py


@pytest.mark.parametrize("argv, message", [
    (["model.d_model=32,abc"],
     "model.d_model='abc': must be a number (like its default, 256) (in the sweep's arm model.d_model=abc)"),
    (["module.lr=1e-3,-1"], "module.lr=-1: must be a number > 0 (in the sweep's arm module.lr=-1)"),
    (["model/attention=mha,gqx"], "model/attention: unknown 'gqx'; valid choices: gqa, mha, mqa"),
    (["experiment=ablate_attention", "model.n_heads=3"],
     "model.d_model=256 is not divisible by model.n_heads=3 (in the sweep's arm model/attention=mha seed=0)"),
    (["model.d_model=64,48", "model.n_heads=4,5"],
     "model.d_model=64 is not divisible by model.n_heads=5 (in the sweep's arm model.d_model=64 model.n_heads=5)"),
])
def test_a_bad_arm_is_refused_before_any_arm_trains(argv, message, tmp_path):
    proc = train_py("-m", *argv, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert refused(proc).startswith(f"lmlab: error: {message}")
    assert not (tmp_path / "sweep").exists()  # no job started


@pytest.mark.parametrize("multirun", [[], ["-m"]])
def test_an_unknown_experiment_is_refused(multirun, tmp_path):
    """experiment was an optional group: Hydra drops a missing option of one without a word and the
    default model trained for minutes."""
    proc = train_py(*multirun, "experiment=ablate_atention", f"hydra.run.dir={tmp_path / 'run'}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert refused(proc).startswith("lmlab: error: experiment: unknown 'ablate_atention'; valid "
                                    "choices: ablate_attention, ablate_moe, ablate_norm, ablate_position")


def test_the_command_line_replaces_a_presets_swept_key():
    arms = sweep_arms(conf_dir(), "train", ["-m", "experiment=ablate_position", "seed=5",
                                            "model/position=rope,alibi"])
    assert [sorted(a) for a in arms] == [
        sorted(["experiment=ablate_position", "seed=5", "model/position=rope"]),
        sorted(["experiment=ablate_position", "seed=5", "model/position=alibi"])]
    assert len(sweep_arms(conf_dir(), "train", ["-m", "experiment=ablate_position"])) == 12


def test_a_preset_without_multirun_gets_a_note():
    assert "without -m this is one run" in single_run_note(["experiment=ablate_norm"])
    assert single_run_note(["-m", "experiment=ablate_norm"]) is None
    assert single_run_note(["model=tiny"]) is None


def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path):
    """submitit's own error was a traceback ending 'Could not detect "srun"'."""
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine has SLURM")
    proc = train_py("-m", "hydra/launcher=slurm", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}")
    assert refused(proc).startswith("lmlab: error: hydra/launcher=slurm: no sbatch and srun")


def test_a_list_value_is_not_a_sweep():
    """The report and W&B labels name an arm by its swept overrides: a list like
    extrapolate=[1,2] was taken for a sweep (it holds a comma) and labelled every arm."""
    assert is_sweep("seed=0,1") and is_sweep("seed=range(3)") and is_sweep("model/position=rope,alibi")
    assert is_sweep("module.lr=tag(log,interval(1e-4,1e-2))")
    assert not is_sweep("extrapolate=[1,2]") and not is_sweep("logger.wandb.tags=[a,b]")
    assert not is_sweep("seed=0") and not is_sweep("'stop=[\"a,b\"]'".strip("'"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_slurm_sweep_is_not_held_to_this_machines_accelerators(tmp_path, monkeypatch):
    """Submitted from a login node without a GPU, trainer=gpu arms run on the cluster's GPU nodes:
    the arms' checks skip whether this machine has the accelerator (the job checks it there)."""
    from lmlab.sweep_check import check_sweep

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    argv = ["-m", "hydra/launcher=slurm", "trainer=gpu", "seed=0,1"]
    assert check_sweep(conf_dir(), "train", argv) is None
    local = check_sweep(conf_dir(), "train", ["-m", "trainer=gpu", "seed=0,1"])
    assert local.startswith("trainer.accelerator=gpu: torch sees no CUDA device here")
