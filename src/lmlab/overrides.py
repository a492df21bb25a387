"""Friendlier errors for the command line, checked before Hydra starts the run: a misspelt key, an
unknown group option, a group choice with or without ``+`` where the defaults list wants the
other, a value of the wrong type or shape, a run directory holding a finished run.

Hydra refuses ``model.n_layer=3`` with "Key 'n_layer' is not in struct" and ``model=nope`` with a
page listing its search path; these say it in one line. Sweeps, override syntax and Hydra's own
flags are left to Hydra.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf

from lmlab.errors import check_choice

_KEY = re.compile(r"^([A-Za-z_][\w.]*)=")  # a plain `a.b.c=value` override
MULTIRUN_FLAGS = ("-m", "--multirun")  # Hydra's flag for a sweep


def unknown_key_message(cfg: DictConfig, overrides: list[str]) -> str | None:
    """The error for the first override whose key is not in ``cfg``, or None if all exist."""
    for override in overrides:
        m = _KEY.match(override)
        if not m or m.group(1).startswith("hydra."):
            continue
        key = m.group(1)
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf in parent.keys():  # keys(): `???` values too
            continue
        keys = sorted(str(k) for k in parent.keys())
        close = difflib.get_close_matches(leaf, keys, n=1)
        hint = f"did you mean '{parent_key + '.' if parent_key else ''}{close[0]}'? " if close else ""
        where = f"'{parent_key}'" if parent_key else "the top level"
        return (f"unknown config key '{key}'; {hint}valid keys of {where}: {', '.join(keys)} "
                f"(use +{key}=... to add a new key)")
    return None


def check_argv(config_dir: str, config_name: str, argv: list[str]) -> str | None:
    """Compose ``config_name`` with the group choices in ``argv`` and check the plain keys; with
    ``-m``, each arm of the sweep (``lmlab.sweep_check``)."""
    if any(a in ("-h", "--help", "--hydra-help") for a in argv):
        return None
    if any(a in MULTIRUN_FLAGS for a in argv):
        if config_name != "train":
            return None
        from lmlab.sweep_check import check_sweep

        return check_sweep(config_dir, config_name, argv)
    import os

    from hydra import compose, initialize_config_dir

    overrides = override_args(argv)
    keys = [a for a in overrides if _KEY.match(a)
            and not os.path.isdir(os.path.join(config_dir, _KEY.match(a).group(1)))]
    others = [a for a in overrides if a not in keys]  # group choices, +x, ~x
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name, overrides=others)
    except MissingConfigException as err:  # an unknown group option: one line, not Hydra's page
        if err.options is None or not err.missing_cfg_file:
            return None
        group, _, name = err.missing_cfg_file.rpartition("/")
        return choice_message(group, name, err.options)
    except (ConfigCompositionException, ValueError) as err:  # a group choice: Hydra's lines
        # end in YAML advice, or a number as a group's option is a traceback
        return group_choice_message(config_dir, others) or defaults_list_message(str(err), config_name)
    except Exception:  # bad override syntax: Hydra's own error says it best
        return None
    return unknown_key_message(cfg, keys) or wrong_type_message(cfg, keys)


FLAG_VALUES = ("--cfg", "-c", "--package", "-p")  # Hydra's flags whose value is the next argument
INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")  # --info's


def override_args(argv: list[str]) -> list[str]:
    """The overrides of a command line: Hydra's flags and their values (``--cfg job``) left out."""
    return [a for i, a in enumerate(argv) if not a.startswith("-")
            and not (i and argv[i - 1] in FLAG_VALUES)
            and not (i and argv[i - 1] in ("--info", "-i") and a in INFO_VALUES)]


def group_choice_message(config_dir: str, overrides: list[str]) -> str | None:
    """The error for the first group choice that is not an option's name (``model=3``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        group, value = override.key_or_group, override.value()
        if isinstance(value, str) or override.is_sweep_override() or not Path(config_dir, group).is_dir():
            continue
        options = sorted(f.stem for f in Path(config_dir, group).glob("*.yaml"))
        if (message := choice_message(group, value, options)) is not None:
            return message
    return None


def choice_message(key: str, value, choices) -> str | None:
    """check_choice's one line for a ``value`` of ``key`` that is not one of ``choices``, or None."""
    try:
        check_choice(key, value, choices)
    except ValueError as err:
        return str(err)
    return None


def defaults_list_message(error: str, config_name: str) -> str | None:
    """One line for a group choice Hydra cannot place in the defaults list, or None: a group
    with no default typed without ``+`` (``hparams_search=lr_width_optuna``), or one with a
    default typed with it (``+experiment=ablate_norm``)."""
    if m := re.match(r"Could not override '([\w/]+)'.*\n.* use \+(\S+)", error, re.S):
        group, choice = m.groups()
        return (f"{choice}: {group} is not in {config_name}.yaml's defaults; "
                f"add it with +{choice}")
    multiple = r"Multiple values for ([\w/]+)\. To override a value use 'override \S+ (\S+)'"
    if m := re.match(multiple, error):
        group, option = m.groups()
        return (f"+{group}={option}: {group} is already in {config_name}.yaml's defaults; "
                f"choose it with {group}={option}")
    return None


MORE_THAN_NUMBERS = ("trainer.devices",)  # a count by default, also `auto` or a list of indices
MORE_THAN_SECTIONS = ("trainer.strategy",)  # trainer=fsdp's is a section; Lightning takes names too


def wrong_type_message(cfg: DictConfig, overrides: list[str]) -> str | None:
    """The error for the first override that gives a number- or bool-valued key a value of
    another kind (``model.d_model=abc``, ``model.bias=maybe``), or None. Keys whose default is
    null, text or an interpolation take anything; their users check them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override() or _is_interpolation(cfg, key):
            continue
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        value = override.value()
        if isinstance(value, str) and "${" in value:  # resolved (and checked) in the job
            continue
        if (message := shape_message(key, node, value)) is not None:
            return message
        if isinstance(node, bool):
            if not isinstance(value, bool):
                return f"{key}={value!r}: must be true or false"
        elif isinstance(node, (int, float)) and key not in MORE_THAN_NUMBERS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"{key}={value!r}: must be a number (like its default, {node!r})"
    return None


def shape_message(key: str, node, value) -> str | None:
    """The error for one value given to a section of keys (``model.attention=5``, a traceback
    in the job) or a mapping given to a list (``module.betas={a:1}``, Hydra's lines), or None;
    null, which switches a section such as ``sample`` off, is left alone."""
    if key in MORE_THAN_SECTIONS:
        return None
    if isinstance(node, DictConfig) and value is not None and not isinstance(value, dict):
        keys = [str(k) for k in node.keys() if not str(k).startswith("_")]  # not _target_
        return (f"{key}={value!r}: {key} is a section of keys ({', '.join(keys)}), not one value; "
                f"set one of them, e.g. {key}.{keys[0]}=..." if keys else
                f"{key}={value!r}: {key} is a section of keys, not one value")
    if isinstance(node, ListConfig) and isinstance(value, dict):
        return f"{key}={value!r}: must be a list (like its default, {list(node)!r})"
    return None


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return isinstance(parent, DictConfig) and OmegaConf.is_interpolation(parent, leaf)


def finished_run_message(argv: list[str]) -> str | None:
    """The error for ``hydra.run.dir=<dir>`` (or, with -m, ``hydra.sweep.dir=<dir>``) naming a
    directory that already holds a finished run, or an unfinished run's checkpoints (one run not
    resumed with ``ckpt_path``, or a job of the sweep); else None. The default directories are
    new (lmlab.run_dirs)."""
    from lmlab.errors import UserError
    from lmlab.run_record import RECORD_FILE, check_no_unresumed_checkpoint, check_not_finished

    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    resumed = any(a.startswith("ckpt_path=") and a not in ("ckpt_path=", "ckpt_path=null") for a in argv)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    for arg in argv:
        if arg.startswith(key) and "${" not in arg:
            target = Path(arg[len(key):])
            dirs = [p.parent for p in target.glob(f"**/{RECORD_FILE}")] if multirun else [target]
            try:
                for d in dirs:
                    check_not_finished(d)
                    if multirun:  # a job the sweep would start afresh over its checkpoints
                        check_no_unresumed_checkpoint(d, sweep=True)
                if not multirun and not resumed:
                    check_no_unresumed_checkpoint(target)
            except UserError as err:
                return str(err)
    return None
