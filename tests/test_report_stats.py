"""The report's statistics: intervals, paired differences, Holm-corrected p-values and verdicts,
checked against scipy.stats computed here independently, on sweep directories with known numbers."""

from __future__ import annotations

import json
import re
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml
from scipy import stats

from lmlab.report import group_arms, make_report
from lmlab.sweep_jobs import load_jobs
from lmlab.report_plots import val_loss_figure
from lmlab.report_speed import steps_to_reach
from lmlab.stats import compare_to_baseline, holm, mean_interval, min_detectable_difference

SEEDS = (0, 1, 2)
BASE = {0: 5.10, 1: 5.31, 2: 5.02}  # the baseline arm's final validation loss per seed
BETTER = {0: 4.80, 1: 5.06, 2: 4.70}  # lower on every seed, by 0.25-0.32
NUMBER = r"[-+]?\d+\.\d+"


def write_job(sweep, num, overrides, final, steps=100, tokens=None, **extra):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / "csv").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    tokens = steps * 64 if tokens is None else tokens
    metrics = {"status": "completed", "seed": int(overrides[-1].split("=")[1]), "steps": steps,
               "tokens": tokens, "tokens_per_step": 64, "params": 1000, "active_params": 1000,
               "flops_per_token": 6000, "final_val_loss": final, "best_val_loss": final - 0.01,
               "val_loss": final - 0.01, "stopped_by": "max_steps", **extra}
    (job / "metrics.json").write_text(json.dumps(metrics))
    # as Lightning logs them: the validation after step s at step s - 1
    rows = [f"{s - 1},{final + 1.0 - s / steps:.4f}" for s in range(steps // 4, steps + 1, steps // 4)]
    (job / "csv" / "metrics.csv").write_text("step,val/loss\n" + "\n".join(rows) + "\n")


@pytest.fixture
def sweep(tmp_path):
    """learned (baseline), rope (better on every seed), alibi (identical to the baseline), none
    (better still, but time-limited: its trainer stopped at 60 of 100 steps)."""
    sweep = tmp_path / "sweep"
    arms = {"learned": BASE, "rope": BETTER, "alibi": BASE,
            "none": {s: v - 1.0 for s, v in BASE.items()}}
    num = 0
    for arm, losses in arms.items():
        for seed in SEEDS:
            extra = {"steps": 60, "stopped_by": "max_time"} if arm == "none" else {}
            write_job(sweep, num, [f"model/position={arm}", f"seed={seed}"], losses[seed], **extra)
            num += 1
    return sweep


def comparison_table(report: str) -> dict[str, dict[str, str]]:
    section = report.split("## Comparison with the baseline", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    return {r["arm"]: r for r in rows}


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(NUMBER, cell)]


def test_intervals_differences_p_values_and_verdicts_match_scipy(sweep):
    report = make_report(sweep).read_text()
    rows = comparison_table(report)
    base = np.array([BASE[s] for s in SEEDS])
    better = np.array([BETTER[s] for s in SEEDS])

    # the baseline's own interval: Student-t over its 3 seeds
    low, high = stats.t.interval(0.95, 2, loc=base.mean(), scale=stats.sem(base))
    assert numbers(rows["model/position=learned"]["final val loss (95% CI)"]) == pytest.approx(
        [base.mean(), low, high], abs=1e-4)
    assert rows["model/position=learned"]["verdict"] == "baseline"

    # rope - learned, paired by seed
    d = better - base
    low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    delta = "Δ final val loss vs baseline (95% CI)"
    assert numbers(rows["model/position=rope"][delta]) == pytest.approx([d.mean(), low, high], abs=1e-4)
    p_rope = stats.ttest_rel(better, base).pvalue
    p_alibi = 1.0  # identical arm: no difference at all
    # Holm over the 2 arms with a verdict (the time-limited one is left out), by hand
    holm_rope = min(1.0, 2 * p_rope)
    assert holm_rope < 0.05
    p, p_corrected = numbers(rows["model/position=rope"]["p (Holm)"].replace("(", " "))
    assert p == pytest.approx(p_rope, abs=1e-4) and p_corrected == pytest.approx(holm_rope, abs=1e-4)
    assert rows["model/position=rope"]["verdict"] == "better"

    assert numbers(rows["model/position=alibi"][delta]) == [0.0]
    assert numbers(rows["model/position=alibi"]["p (Holm)"].replace("(", " ")) == [p_alibi, p_alibi]
    assert rows["model/position=alibi"]["verdict"].startswith("no detectable difference at 3 seeds")

    # the time-limited arm: flagged, shown, and kept out of the verdicts and the correction
    none = rows["model/position=none"]
    assert "time-limited" in none["flags"] and "fewer steps (60 < 100)" in none["flags"]
    assert none["verdict"] == "excluded (flagged)" and none["p (Holm)"] == "—"
    assert rows["model/position=rope"]["flags"] == "—"
    assert (sweep / "val_loss.png").stat().st_size > 0


def test_time_panel_places_each_arm_by_its_seconds_per_step(tmp_path):
    """The fourth panel: validation steps times the arm's mean training seconds per step; an arm
    whose jobs do not record their training time has no line there (but has one per step)."""
    sweep = tmp_path / "sweep"
    for num, (arm, extra) in enumerate([("learned", {"train_time_s": 100.0}), ("learned", {"train_time_s": 110.0}),
                                        ("rope", {"train_time_s": 150.0}), ("alibi", {})]):
        write_job(sweep, num, [f"model/position={arm}", f"seed={num}"], 5.0, **extra)
    arms, _, _ = group_arms(load_jobs(sweep))
    fig = val_loss_figure(arms)
    steps_axis, time_axis = fig.axes[0], fig.axes[3]
    assert time_axis.get_xlabel() == "training seconds"
    x = {line.get_label().split(" (")[0]: list(line.get_xdata()) for line in time_axis.get_lines()}
    assert x.keys() == {"model/position=learned", "model/position=rope"}
    assert x["model/position=learned"] == pytest.approx([s * 1.05 for s in (25, 50, 75, 100)])
    assert x["model/position=rope"] == pytest.approx([s * 1.5 for s in (25, 50, 75, 100)])
    assert len(steps_axis.get_lines()) == 3
    plt.close(fig)


def test_speed_at_equal_quality(tmp_path):
    """Seconds to the baseline's final validation loss (5.0), by hand: each curve falls linearly,
    final + 0.75, + 0.5, + 0.25, final at steps 25, 50, 75, 100."""
    sweep = tmp_path / "sweep"
    for num, (arm, final, seconds) in enumerate([("learned", 5.0, 100.0), ("rope", 4.5, 150.0),
                                                  ("alibi", 4.9, 100.0), ("none", 5.5, 100.0)]):
        write_job(sweep, num, [f"model/position={arm}", "seed=0"], final, train_time_s=seconds)
    report = make_report(sweep).read_text()
    section = report.split("## Speed at equal quality", 1)[1].split("\n## ", 1)[0]
    assert "reaches the baseline's final one, 5.0000" in section
    rows = {c[0]: c[1:] for c in ([x.strip() for x in ln.strip("|").split("|")]
                                  for ln in section.splitlines() if ln.startswith("| model/"))}
    assert rows["model/position=learned"] == ["1.000", "100.0", "1.00x"]
    assert rows["model/position=rope"] == ["1.500", "75.0", "0.75x"]  # step 50 at 1.5 s a step
    assert rows["model/position=alibi"] == ["1.000", "90.0", "0.90x"]  # 5.15 at 75, 4.9 at 100
    assert rows["model/position=none"] == ["1.000", "not reached in 100 steps", "—"]
    assert steps_to_reach([(10, 4.0), (20, 3.0)], 5.0) == 10.0


def test_named_baseline_and_a_worse_arm(sweep):
    rows = comparison_table(make_report(sweep, baseline="rope").read_text())
    assert rows["model/position=rope"]["verdict"] == "baseline"
    assert rows["model/position=learned"]["verdict"] == "worse"
    assert rows["model/position=alibi"]["verdict"] == "worse"
    with pytest.raises(ValueError, match="baseline: unknown arm 'gpt'; valid choices: model/position=learned"):
        make_report(sweep, baseline="gpt")


def test_a_flagged_baseline_gives_no_verdicts(tmp_path):
    sweep = tmp_path / "sweep"
    for i, seed in enumerate(SEEDS):
        write_job(sweep, i, ["model/position=learned", f"seed={seed}"], BASE[seed],
                  tokens=1000 if seed == 0 else None)  # one seed trained fewer tokens
        write_job(sweep, 3 + i, ["model/position=rope", f"seed={seed}"], BETTER[seed])
        budget = {"adjusted": "model.ffn.hidden_dim", "from": None, "to": 200 + i}
        write_job(sweep, 6 + i, ["model/position=alibi", f"seed={seed}"], BETTER[seed], budget=budget)
    rows = comparison_table(make_report(sweep).read_text())
    assert "fewer tokens (1,000 < 6,400)" in rows["model/position=learned"]["flags"]
    assert rows["model/position=alibi"]["matched width"] == (
        "model.ffn.hidden_dim: None -> 200 / model.ffn.hidden_dim: None -> 201 / "
        "model.ffn.hidden_dim: None -> 202")
    assert rows["model/position=learned"]["matched width"] == "—"
    assert rows["model/position=rope"]["verdict"] == "n/a (baseline flagged)"


def test_stats_functions_against_scipy_and_simulation():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(5, 0.1, 5), rng.normal(5, 0.1, 5), rng.normal(5, 0.1, 5)
    iv = mean_interval(list(a))
    assert (iv.low, iv.high) == pytest.approx(stats.t.interval(0.95, 4, loc=a.mean(), scale=stats.sem(a)))
    comps = compare_to_baseline({"a": dict(enumerate(a)), "b": dict(enumerate(b)),
                                 "c": dict(enumerate(c))})
    ps = [stats.ttest_rel(b, a).pvalue, stats.ttest_rel(c, a).pvalue]
    assert [x.p for x in comps] == pytest.approx(ps)
    lo, hi = sorted(ps)
    expected = {lo: min(1, 2 * lo), hi: min(1, max(2 * lo, hi))}
    assert [x.p_holm for x in comps] == pytest.approx([expected[p] for p in ps])
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])

    # the MDD: a true difference of that size is detected in 80% of simulated 5-seed experiments
    mdd = min_detectable_difference(sd=0.1, n=5)
    d = rng.normal(mdd, 0.1, size=(40_000, 5))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(5))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 4)) == pytest.approx(0.8, abs=0.01)


def test_extrapolation_table_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    for i, seed in enumerate(SEEDS):
        for k, (arm, losses) in enumerate([("learned", [5.0 + seed, None, None]),
                                           ("alibi", [5.1 + seed, 5.0 + seed, 4.9 + seed])]):
            rows = [{"factor": f, "length": 16 * f, "loss": v} for f, v in zip((1, 2, 4), losses)]
            write_job(sweep, 3 * k + i, [f"model/position={arm}", f"seed={seed}"], 5.0,
                      extrapolation={"split": "test", "context_length": 16, "extrapolation": rows})
    report = make_report(sweep).read_text()
    section = report.split("## Length extrapolation", 1)[1]
    assert "the test split" in section
    header, _, learned, alibi = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert header == "| arm | 16 (1x) | 32 (2x) | 64 (4x) |"
    assert learned.split(" | ")[2:] == ["n/a", "n/a |"]
    low, high = stats.t.interval(0.95, 2, loc=5.9, scale=stats.sem([4.9, 5.9, 6.9]))
    assert numbers(alibi.split(" | ")[3]) == pytest.approx([5.9, low, high], abs=1e-4)
    assert (sweep / "extrapolation.png").stat().st_size > 0


def test_a_job_run_with_the_default_seed_pairs_with_the_same_seed_typed(sweep):
    """A job without `seed=` on its command line has its seed from metrics.json (an int); the
    same seed typed is a string: they pair, and the comparison is the one with every seed typed."""
    from lmlab.comparison import comparison_rows

    def rows():
        arms, _, _ = group_arms(load_jobs(sweep), {"model/position", "seed"})
        return {r["arm"]: r for r in comparison_rows(arms, "learned")[0]}

    typed = rows()
    overrides = sweep / "0" / ".hydra" / "overrides.yaml"  # learned, seed 0
    overrides.write_text(yaml.safe_dump(["model/position=learned"]))
    assert rows() == typed


def test_a_job_resumed_in_place_stays_in_its_arm(sweep):
    """A job rerun in its own directory from its checkpoint (`ckpt_path=... module.extend=true`
    added to its overrides) is the same arm, not an arm of its own."""
    def rows():
        arms, _, _ = group_arms(load_jobs(sweep), {"model/position", "seed"})
        return {a.label: sorted(j.num for j in a.jobs) for a in arms}

    before = rows()
    overrides = sweep / "4" / ".hydra" / "overrides.yaml"  # rope, seed 1
    resumed = yaml.safe_load(overrides.read_text()) + ["ckpt_path=/runs/4/last.ckpt", "module.extend=true"]
    overrides.write_text(yaml.safe_dump(resumed))
    assert rows() == before and len(before) == 4


def test_a_sweep_with_only_running_jobs_plots_without_a_warning(tmp_path):
    """The report on a sweep whose first job is still running printed matplotlib's "No artists
    with labels found to put in legend" (its curve is drawn dashed, without a label)."""
    write_job(tmp_path / "sweep", 0, ["seed=0"], 5.0, status="running")
    arms, _, _ = group_arms(load_jobs(tmp_path / "sweep"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = val_loss_figure(arms)
    assert len(fig.axes[0].get_lines()) == 1 and fig.axes[0].get_legend() is None
    plt.close(fig)
