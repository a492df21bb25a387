"""Fair budgets: one width adjusted until the arm's parameter count is the reference arm's."""

from __future__ import annotations

import pytest

from lmlab.budget import check_budget, match_params
from lmlab.model.transformer import Transformer
from tests.conftest import CONF, TINY, compose_cfg, model_cfg

SMALL_VOCAB = TINY + ["model=tiny", "model.vocab_size=256", "model.d_model=64"]  # embeddings do not swamp the count


def built_count(overrides: list[str]) -> int:
    """Counted on a real model built from the composed config (not on the meta device)."""
    return Transformer(model_cfg(overrides)).active_params()


@pytest.mark.parametrize("arm, reference, adjust", [
    (["model/attention=mqa"], {"attention": "mha"}, "ffn.hidden_dim"),
    (["model/ffn=moe", "model.ffn.n_experts=4", "model.ffn.top_k=2"], {"ffn": "dense"}, "ffn.hidden_dim"),
    (["model.n_layers=3"], {"n_layers": 2}, "ffn.hidden_dim"),
])
def test_matched_arm_is_within_one_percent_of_the_reference(arm, reference, adjust):
    as_overrides = [f"model/{k}={v}" if isinstance(v, str) else f"model.{k}={v}" for k, v in reference.items()]
    target = built_count(SMALL_VOCAB + as_overrides)
    unmatched = built_count(SMALL_VOCAB + arm)
    assert abs(unmatched - target) > 0.05 * target  # far apart before matching
    match = "{" + ",".join(f"{k}:{v}" for k, v in reference.items()) + "}"  # as on the command line
    cfg = compose_cfg(SMALL_VOCAB + arm + [f"budget.match={match}", f"budget.adjust={adjust}"])
    record = match_params(cfg, CONF)
    width = cfg.model
    for part in adjust.split("."):
        width = width[part]
    assert record["adjusted"] == f"model.{adjust}" and record["to"] == width
    assert record["target"] == target
    matched = built_count(SMALL_VOCAB + arm + [f"model.{adjust}={width}"])
    assert record["params"] == matched and abs(matched - target) <= 0.01 * target


def test_d_model_moves_in_whole_even_heads_and_says_when_it_cannot_match():
    cfg = compose_cfg(SMALL_VOCAB + ["model.n_layers=3", "budget.match={n_layers:2}",
                                     "budget.adjust=d_model", "budget.tolerance=0.2"])
    record = match_params(cfg, CONF)
    assert record["to"] % 8 == 0 and record["to"] < 64  # 4 heads of an even size; fewer layers
    cfg = compose_cfg(SMALL_VOCAB + ["model.n_layers=3", "budget.match={n_layers:2}",
                                     "budget.adjust=d_model"])
    with pytest.raises(ValueError, match=r"budget: model.d_model=\d+ gives [\d,]+ active parameters, "
                                         r"not within 1% of [\d,]+; adjust another width"):
        match_params(cfg, CONF)


def test_match_a_count_non_embedding_and_off():
    cfg = compose_cfg(TINY + ["budget.match=20000", "budget.count=non_embedding"])
    record = match_params(cfg, CONF)
    assert record["from"] is None and abs(record["params"] - 20000) <= 200
    model = Transformer(model_cfg(TINY + [f"model.ffn.hidden_dim={record['to']}"]))
    blocks_and_norm = sum(p.numel() for p in [*model.blocks.parameters(), *model.norm.parameters()])
    assert record["params"] == blocks_and_norm  # no token or position table, no tied head
    assert match_params(compose_cfg(TINY), CONF) is None  # budget.match=null: nothing changes


def test_bad_reference_is_one_line():
    cfg = compose_cfg(TINY + ["budget.match={attention:mla}"])
    with pytest.raises(ValueError, match="budget.match: model/attention: unknown 'mla'; valid choices: gqa, mha, mqa"):
        match_params(cfg, CONF)


@pytest.mark.parametrize("budget, message", [
    ({"match": "abc"}, "budget.match='abc': must be a parameter count > 0 or the reference's model choices"),
    ({"match": [1, 2]}, "budget.match=[1, 2]: must be a parameter count > 0"),
    ({"match": 0}, "budget.match=0: must be a parameter count > 0"),
    ({"match": {"nosuch": 3}}, "budget.match: 'nosuch' is neither a model group (attention, ffn, norm, "
                               "position) nor a key of model"),
    ({"match": {"attention": "mha"}, "adjust": "foo"}, "budget.adjust='foo': not a key of model"),
    ({"match": 10**6, "adjust": "ffn.nope"}, "budget.adjust='ffn.nope': not a key of model"),
    ({"match": 10**6, "count": "all"}, "budget.count: unknown 'all'; valid choices: active, non_embedding"),
    ({"match": 10**6, "tolerance": -1}, "budget.tolerance=-1: must be a fraction in (0, 1)"),
])
def test_a_budget_that_cannot_be_carried_out_is_refused_up_front(budget, message):
    """These trained and recorded a 'model.foo' that was never a width, ignored an unknown
    reference key, or failed with a dict() error that named nothing, after Lightning had loaded."""
    model = model_cfg(TINY)
    with pytest.raises(ValueError) as err:
        check_budget({"adjust": "ffn.hidden_dim", "count": "active", "tolerance": 0.01, **budget}, model, CONF)
    assert str(err.value).startswith(message)


def test_a_good_budget_passes_the_check():
    for match in (2_000_000, 2e6, {"attention": "mha"}, {"n_layers": 4}):
        check_budget({"match": match, "adjust": "ffn.hidden_dim"}, model_cfg(TINY), CONF)
