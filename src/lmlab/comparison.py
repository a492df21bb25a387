"""The report's comparison of arms: intervals over seeds, paired differences to a baseline arm,
Holm-corrected paired t-tests and verdicts (lmlab.stats), with unfair arms flagged and kept out.

A job is flagged when it did not finish (failed or still running), when its trainer was stopped by
``max_time`` before ``max_steps``, or when it trained fewer steps or tokens than the sweep's
longest job. An arm with a flagged job is shown but gets no verdict; nor does any arm when the
baseline is flagged.
"""

from __future__ import annotations

import math

from lmlab.stats import compare_to_baseline, mean_interval

# (metrics.json key, fallback key of older runs, column title)
LOSSES = (("final_val_loss", "val_loss", "final val loss"),
          ("best_val_loss", "val_loss", "best val loss"),
          ("test_loss", None, "test loss"))


def job_seed(job) -> str:
    """The seed that pairs a job with other arms' jobs: ``seed=0`` typed (a string) and the
    default seed recorded in ``metrics.json`` (an int) are the same seed."""
    return str(job.override_map().get("seed", job.metrics.get("seed", "default")))


def job_flags(jobs: list) -> dict[str, list[str]]:
    """job number -> why its numbers are not comparable with the others' (empty: comparable)."""
    done = [j for j in jobs if j.status == "completed"]
    most_steps = max((j.metrics.get("steps", 0) for j in done), default=0)
    most_tokens = max((j.metrics.get("tokens") or 0 for j in done), default=0)
    flags: dict[str, list[str]] = {}
    for j in jobs:
        f = [] if j.status == "completed" else [j.status]
        if j.metrics.get("stopped_by") == "max_time":
            f.append("time-limited")
        if j.status == "completed" and j.metrics.get("steps", 0) < most_steps:
            f.append(f"fewer steps ({j.metrics.get('steps', 0)} < {most_steps})")
        tokens = j.metrics.get("tokens")
        if j.status == "completed" and tokens is not None and tokens < most_tokens:
            f.append(f"fewer tokens ({tokens:,} < {most_tokens:,})")
        flags[j.num] = f
    return flags


def primary_metric(arms: list) -> tuple[str, str | None, str]:
    """The loss the verdicts compare: the test split's when every completed job has one (the
    checkpoint was chosen on validation windows), else the last validation loss."""
    done = [j for a in arms for j in a.jobs if j.status == "completed"]
    if done and all(j.metrics.get("test_loss") is not None for j in done):
        return LOSSES[2]
    return LOSSES[0]


def values_of(arm, key: str, fallback: str | None) -> dict:
    """seed -> value over the arm's completed jobs."""
    out = {}
    for j in arm.jobs:
        v = j.metrics.get(key, j.metrics.get(fallback) if fallback else None)
        if j.status == "completed" and v is not None and math.isfinite(v):
            out[job_seed(j)] = float(v)
    return out


def resolve_baseline(arms: list, baseline: str | None) -> str:
    labels = [a.label for a in arms]
    if baseline is None:
        return labels[0]
    if baseline in labels:
        return baseline
    matches = [lb for lb in labels if baseline in lb]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"baseline: {baseline!r} is part of {len(matches)} arms ({', '.join(matches)}); "
                         "give more of the label")
    raise ValueError(f"baseline: unknown arm {baseline!r}; valid choices: {', '.join(labels)}")


def comparison_rows(arms: list, baseline: str | None = None, alpha: float = 0.05) -> tuple[list[dict], str]:
    """One row per arm for the report's comparison table, and the title of the compared loss."""
    if not arms:
        return [], ""
    baseline = resolve_baseline(arms, baseline)
    flags = job_flags([j for a in arms for j in a.jobs])
    arm_flags = {a.label: sorted({f for j in a.jobs for f in flags[j.num]}) for a in arms}
    key, fallback, title = primary_metric(arms)
    fair = {a.label: values_of(a, key, fallback) for a in arms
            if not arm_flags[a.label] and values_of(a, key, fallback)}
    comps = {}
    if baseline in fair:
        comps = {c.arm: c for c in compare_to_baseline(fair, baseline, alpha)}
    shown_losses = [loss for loss in LOSSES if loss[0] != "test_loss" or title == "test loss"]
    rows = []
    for a in arms:
        row = {"arm": a.label, "seeds": ",".join(str(job_seed(j)) for j in a.jobs),
               "flags": "; ".join(arm_flags[a.label]) or "—",
               "params": _one(a, "params", ",.0f"),
               "active params": _one(a, "active_params", ",.0f", "params"),
               "FLOPs/token": _one(a, "flops_per_token", ",.0f")}
        if any(j.metrics.get("budget") for b in arms for j in b.jobs):  # budget.match was on
            row["matched width"] = " / ".join(sorted({
                f"{j.metrics['budget']['adjusted']}: {j.metrics['budget']['from']} -> "
                f"{j.metrics['budget']['to']}" for j in a.jobs if j.metrics.get("budget")})) or "—"
        for k, fb, t in shown_losses:
            vals = list(values_of(a, k, fb).values())
            row[f"{t} (95% CI)"] = mean_interval(vals).format() if vals else "—"
        c = comps.get(a.label)
        row[f"Δ {title} vs baseline (95% CI)"] = c.diff.format("+.4f") if c else "—"
        row["p (Holm)"] = _p(c)
        row["verdict"] = _verdict(a.label, baseline, arm_flags, c)
        rows.append(row)
    return rows, title


def _one(arm, key: str, fmt: str, fallback: str | None = None) -> str:
    vals = {j.metrics.get(key, j.metrics.get(fallback) if fallback else None) for j in arm.jobs
            if j.status == "completed"} - {None}
    if not vals:
        return "—"
    return " / ".join(format(v, fmt) for v in sorted(vals))


def _p(c) -> str:
    if c is None or c.p is None:
        return "—"
    return f"{_pformat(c.p)} ({_pformat(c.p_holm)})"


def _pformat(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _verdict(label: str, baseline: str, arm_flags: dict, c) -> str:
    if label == baseline:
        return "baseline" + (" (flagged: no verdicts)" if arm_flags[label] else "")
    if arm_flags[label]:
        return "excluded (flagged)"
    if arm_flags[baseline]:
        return "n/a (baseline flagged)"
    return c.verdict if c else "n/a (no common seed)"
