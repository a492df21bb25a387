"""A friendlier error for a misspelt config key, checked before Hydra starts the run.

Hydra refuses ``model.n_layer=3`` with "Key 'n_layer' is not in struct"; this names the nearest
valid keys instead. It only speaks up for that one mistake and leaves every other case (group
choices, sweeps, Hydra's own flags) to Hydra.
"""

from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig, OmegaConf

_KEY = re.compile(r"^([A-Za-z_][\w.]*)=")  # a plain `a.b.c=value` override


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
    """Compose ``config_name`` with the group choices in ``argv`` and check the plain keys."""
    if any(a in ("-h", "--help", "--hydra-help", "-m", "--multirun") for a in argv):
        return None
    import os

    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith("-")]
    keys = [a for a in overrides if _KEY.match(a)
            and not os.path.isdir(os.path.join(config_dir, _KEY.match(a).group(1)))]
    others = [a for a in overrides if a not in keys]  # group choices, +x, ~x: Hydra checks them
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name, overrides=others)
    except Exception:  # a bad group choice or syntax: Hydra's own error says it best
        return None
    return unknown_key_message(cfg, keys)
