"""A sweep's arms checked before the first one trains: ``python train.py -m ...`` expands its
comma and ``range()`` sweeps (and an experiment preset's ``hydra.sweeper.params``) into the
command line of each arm, as Hydra's basic sweeper will, and gives each the checks a single run
gets (unknown keys and options, wrong types, then ``validate.check_config``). A bad value in the
third arm is refused in one line before the first two have trained.

Optuna's ``interval()`` and ``glob()`` sweeps are not enumerable: those keys keep their defaults
here and are checked in each trial.
"""

from __future__ import annotations

import itertools
import os
import shutil

from hydra.core.override_parser.overrides_parser import OverridesParser

from lmlab.errors import UserError
from lmlab.overrides import MULTIRUN_FLAGS


def _axis(override) -> list[str] | None:
    """The ``key=value`` lines of one parsed override: one, or one per swept value; None when
    its values cannot be listed (Optuna's intervals, ``glob``)."""
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
    except Exception:  # not a choice or range sweep
        return None


def sweep_arms(config_dir: str, config_name: str, argv: list[str]) -> list[list[str]]:
    """Each arm's overrides, in the basic sweeper's order: the preset's swept keys, then the
    command line's (a key on the command line replaces the preset's)."""
    parser = OverridesParser.create()
    typed = parser.parse_overrides([a for a in argv if not a.startswith("-")])
    axes: dict[str, list[str]] = {}
    for key, value in _preset_params(config_dir, config_name, typed).items():
        if (axis := _axis(parser.parse_override(f"{key}={value}"))) is not None:
            axes[key] = axis
    for override in typed:
        axes.pop(override.get_key_element().lstrip("+~"), None)
        if (axis := _axis(override)) is not None:
            axes[override.get_key_element()] = axis
    return [list(arm) for arm in itertools.product(*axes.values())]


def _preset_params(config_dir: str, config_name: str, typed) -> dict:
    """``hydra.sweeper.params`` of the config the command line composes (an experiment preset's
    grid), when the sweeper is Hydra's basic one."""
    from hydra import compose, initialize_config_dir

    fixed = [o.input_line for o in typed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
    if not str(cfg.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return {}
    return dict(cfg.hydra.sweeper.get("params") or {})


def check_sweep(config_dir: str, config_name: str, argv: list[str]) -> str | None:
    """The first error of any arm (naming the arm's swept values), or None."""
    from lmlab.overrides import check_argv

    remote = "hydra/launcher=slurm" in argv  # the arms run on the cluster's nodes, not here
    if remote and not (shutil.which("sbatch") and shutil.which("srun")):
        return ("hydra/launcher=slurm: no sbatch and srun on this machine's PATH; submit from a "
                "SLURM login node, or run here with hydra/launcher=parallel")

    try:
        arms = sweep_arms(config_dir, config_name, argv)
    except Exception:  # bad override syntax, an unknown preset: the single-run checks say it
        return check_argv(config_dir, config_name, [a for a in argv if a not in MULTIRUN_FLAGS])
    flags = [a for a in argv if a.startswith("-") and a not in MULTIRUN_FLAGS]
    # the command-line checks of every arm first: they need no Lightning, so a typo is refused fast
    checks = [lambda arm: check_argv(config_dir, config_name, flags + arm),
              lambda arm: _check_arm(config_dir, arm, remote)]
    for check in checks:
        for arm in arms:
            if (message := check(arm)) is not None:
                swept = [o for o in arm if o.split("=")[0] not in _fixed_keys(argv)]
                return f"{message} (in the sweep's arm {' '.join(swept)})" if swept else message
    return None


def _fixed_keys(argv: list[str]) -> set[str]:
    """The keys the command line gives one value."""
    typed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    return {o.get_key_element() for o in typed if not o.is_sweep_override()}


def _check_arm(config_dir: str, arm: list[str], remote: bool) -> str | None:
    """``validate.check_config`` on one arm's composed training config (its output paths set to
    the working directory: nothing is written)."""
    from hydra import compose, initialize_config_dir

    from lmlab.validate import check_config

    here = os.getcwd()
    overrides = [o for o in arm if not o.startswith("hydra.")]
    overrides += [f"paths.root_dir={here}", f"paths.output_dir={here}"]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    try:
        check_config(cfg, here=not remote)
    except UserError as err:
        return str(err)
    return None


def single_run_note(argv: list[str]) -> str | None:
    """What to tell a user who chose an ablation preset without ``-m``: it runs one job, with the
    preset's fixed settings and the defaults of what it sweeps."""
    if any(a in MULTIRUN_FLAGS for a in argv):
        return None
    preset = next((a.split("=", 1)[1] for a in argv if a.startswith("experiment=")), None)
    if preset in (None, "null"):
        return None
    return (f"lmlab: note: experiment={preset} is a sweep; without -m this is one run, with the "
            f"defaults of what it sweeps (python train.py -m experiment={preset} runs every arm)")
