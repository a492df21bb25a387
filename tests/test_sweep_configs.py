"""The sweep configs: experiments compose to their sweeps, the launchers (parallel, SLURM's job
script as submitit writes it) and the Optuna search space."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_cfg


@pytest.mark.parametrize("name,key,values", [
    ("ablate_attention", "model/attention", "mha,gqa,mqa"),
    ("ablate_position", "model/position", "learned,rope,alibi,none"),
    ("ablate_norm", "model/norm", "layernorm,rmsnorm"),
    ("ablate_moe", "+experiment/moe_arms", "dense,moe"),
])
def test_experiment_configs_compose_to_sweeps(name, key, values):
    cfg = compose_cfg([f"experiment={name}"])
    params = cfg.hydra.sweeper.params
    assert params[key] == values and params["seed"] == "0,1,2"
    group = key.lstrip("+")
    for value in values.split(","):  # every arm composes (the MoE one once model/ffn/moe exists)
        if group == "experiment/moe_arms" and value == "moe" and \
                not (Path(CONF) / "model" / "ffn" / "moe.yaml").is_file():
            continue
        arm = compose_cfg([f"experiment={name}", f"{key}={value}"])
        assert arm.task_name == name
        if group.startswith("model/"):
            assert arm.hydra.runtime.choices[group] == value


@pytest.mark.skipif(not (Path(CONF) / "model" / "ffn" / "moe.yaml").is_file(),
                    reason="model/ffn/moe.yaml not merged yet")
def test_moe_arm_has_the_dense_arms_active_ffn_width():
    cfg = compose_cfg(["experiment=ablate_moe", "+experiment/moe_arms=moe"])
    ffn = OmegaConf.to_container(cfg.model.ffn, resolve=True)
    dense = compose_cfg(["experiment=ablate_moe", "+experiment/moe_arms=dense"]).model.ffn
    assert ffn["top_k"] * ffn["hidden_dim"] == dense.hidden_mult * cfg.model.d_model


def test_parallel_launcher_config():
    cfg = compose_cfg(["hydra/launcher=parallel"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_writes_the_expected_job_script(tmp_path, monkeypatch):
    """Compose hydra/launcher=slurm and build the sbatch script exactly as the submitit launcher
    plugin does (same parameter mapping), with submitit's own Slurm executor."""
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    srun = tmp_path / "bin" / "srun"  # submitit checks that it runs on a cluster
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_cfg(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}/sweep",
                       "hydra.launcher.partition=gpu", "experiment=ablate_norm"])
    HydraConfig.instance().set_config(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    folder, max_timeout = params.pop("submitit_folder"), params.pop("max_num_timeout")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                     slurm_max_num_timeout=max_timeout)
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit X",
                                                           "uid")
    for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=60", "#SBATCH --job-name=lmlab-ablate_norm",
                 f"#SBATCH --output={tmp_path}/sweep/.submitit/%j/%j_0_log.out",
                 "export OMP_NUM_THREADS=8", "srun --unbuffered"]:
        assert line in script, line


def test_optuna_search_config_composes_and_builds_the_study_space():
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = compose_cfg(["+hparams_search=lr_width_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert isinstance(instantiate(sweeper.sampler), optuna.samplers.TPESampler)
    parser = OverridesParser.create()
    dists = {k: create_optuna_distribution_from_override(parser.parse_override(f"{k}={v}"))
             for k, v in sweeper.params.items()}
    lr = dists["module.lr"]
    assert (lr.low, lr.high) == (1e-4, 1e-2) and type(lr).__name__ == "LogUniformDistribution"
    assert list(dists["model.d_model"].choices) == [64, 128, 256]
