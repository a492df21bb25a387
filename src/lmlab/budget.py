"""Fair budgets: bring an arm's parameter count to a reference's by adjusting one width.

    python train.py -m model/attention=mha,mqa budget.match={attention:mha} budget.adjust=ffn.hidden_dim

``budget.match`` is the reference: a parameter count, or what turns this run's model into the
reference model, e.g. the baseline arm's choices: ``{group: option}`` for a model group
(``{attention: mha}``, ``{ffn: dense}``) and ``{key: value}`` for a model value (``{n_layers: 4}``). ``budget.adjust`` names the width changed (a key under ``model``: ``ffn.hidden_dim``,
``d_model``, ...); it is searched until the count is as close as it gets, and must land within
``budget.tolerance`` (1%). ``budget.count`` says what is counted: ``active`` (the parameters a token
uses: all of them for dense models, the routed experts it reaches for MoE) or ``non_embedding``
(the same less the vocabulary and position tables, tied or not, as in Kaplan et al. 2020). Models are built on the meta device
to be counted, so the search costs no memory and milliseconds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmlab.checks import is_number, require

COUNTS = ("active", "non_embedding")


def count_params(model_cfg: dict, count: str = "active") -> int:
    from lmlab.model.transformer import Transformer

    check_count(count)
    with torch.device("meta"):
        model = Transformer(model_cfg)
    n = model.active_params()
    if count == "non_embedding":  # Kaplan et al. (2020): less vocabulary and position tables
        n -= sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
        if model.lm_head.weight is not model.tok_emb.weight:
            n -= model.lm_head.weight.numel()
    return n


def check_count(count: str) -> None:
    if count not in COUNTS:
        raise ValueError(f"budget.count: unknown {count!r}; valid choices: {', '.join(COUNTS)}")


def _with(cfg: DictConfig, key: str, value) -> DictConfig:
    out = copy.deepcopy(cfg)
    OmegaConf.update(out, key, value, merge=False, force_add=True)  # a group option replaces
    return out


def _model(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.model, resolve=True)


def reference_cfg(cfg: DictConfig, reference: dict, conf_dir: str | Path) -> DictConfig:
    """``cfg`` with its model turned into the reference: ``{group: option}`` picks
    ``conf/model/<group>/<option>.yaml`` (as ``model/<group>=<option>`` would), any other
    ``{key: value}`` sets ``model.<key>``."""
    for key, value in reference.items():
        group = Path(conf_dir, "model", str(key))
        if group.is_dir():
            path = group / f"{value}.yaml"
            if not path.is_file():
                options = sorted(p.stem for p in group.glob("*.yaml"))
                raise ValueError(f"budget.match: model/{key}: unknown {value!r}; valid choices: "
                                 f"{', '.join(options)}")
            cfg = _with(cfg, f"model.{key}", OmegaConf.load(path))
        else:
            cfg = _with(cfg, f"model.{key}", value)
    return cfg


def check_budget(budget: dict, model: dict, conf_dir: str | Path) -> None:
    """Raise ValueError for a ``budget`` that cannot be carried out (before anything is built):
    ``match`` a count or ``{group: option | key: value}`` of this model, ``adjust`` one of its
    keys, ``count`` one of COUNTS, ``tolerance`` in (0, 1)."""
    match = budget.get("match")
    if match is None:
        return
    require((is_number(match) and match > 0) or (isinstance(match, dict) and bool(match)), "budget.match",
            match, "a parameter count > 0 or the reference's model choices, e.g. budget.match={attention:mha}")
    model = OmegaConf.create(model)
    groups = sorted(p.name for p in Path(conf_dir, "model").iterdir() if p.is_dir())
    for key in match if isinstance(match, dict) else ():
        if key not in groups and OmegaConf.select(model, str(key), default=_MISSING) is _MISSING:
            raise ValueError(f"budget.match: {key!r} is neither a model group ({', '.join(groups)}) "
                             f"nor a key of model")
    adjust = str(budget.get("adjust"))
    if OmegaConf.select(model, adjust, default=_MISSING) is _MISSING:
        raise ValueError(f"budget.adjust={adjust!r}: not a key of model; e.g. ffn.hidden_dim, d_model")
    check_count(budget.get("count", "active"))
    tol = budget.get("tolerance", 0.01)
    require(is_number(tol) and 0 < tol < 1, "budget.tolerance", tol, "a fraction in (0, 1), e.g. 0.01")


_MISSING = object()


def match_params(cfg: DictConfig, conf_dir: str | Path) -> dict | None:
    """Set ``model.<budget.adjust>`` in ``cfg`` so the model's count is the reference's; return
    what was done (for metrics.json), or None when ``budget.match`` is null."""
    b = cfg.get("budget")
    if b is None or b.get("match") is None:
        return None
    count, key, tol = b.get("count", "active"), f"model.{b.adjust}", float(b.get("tolerance", 0.01))
    match = b.match
    if isinstance(match, (int, float)):
        target = int(match)
    else:
        target = count_params(_model(reference_cfg(cfg, dict(match), conf_dir)), count)
    before = OmegaConf.select(cfg, key)
    step = 1
    if b.adjust == "d_model":  # keep whole (and, for RoPE, even) heads
        step = 2 * int(cfg.model.n_heads)

    def n(width: int) -> int:
        return count_params(_model(_with(cfg, key, width)), count)

    low, high = step, step
    while n(high) < target:  # bracket: the count grows with the width
        low, high = high, high * 2
        if high > 2**24:
            raise ValueError(f"budget: no {key} reaches {target:,} parameters")
    while high - low > step:  # the smallest multiple of step with n >= target
        mid = (low + high) // 2 // step * step
        low, high = (mid, high) if n(mid) < target else (low, mid)
    width = min((low, high), key=lambda w: abs(n(w) - target))
    got = n(width)
    if abs(got - target) > tol * target:
        raise ValueError(f"budget: {key}={width} gives {got:,} {count} parameters, not within "
                         f"{tol:.0%} of {target:,}; adjust another width (budget.adjust)")
    OmegaConf.update(cfg, key, width, force_add=True)
    return {"adjusted": key, "from": before, "to": width, "count": count, "target": target,
            "params": got, "match": OmegaConf.to_container(match) if not isinstance(match, (int, float))
            else match}
