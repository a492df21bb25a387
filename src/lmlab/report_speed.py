"""The report's speed at equal quality: how long each arm trains before its validation loss
reaches the baseline's final one. An arm that learns more per step but runs slower per step
(Muon against AdamW, an untied head) can win or lose here while it wins per step."""

from __future__ import annotations

from lmlab.comparison import resolve_baseline
from lmlab.report_plots import arm_scale, completed_curves, seconds_per_step, seed_band


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first step at which ``curve`` (step, validation loss) is at or below ``target``,
    linearly interpolated between the validations around it; None if it never is."""
    previous = None
    for step, loss in curve:
        if loss <= target:
            if previous is None:
                return float(step)
            s0, l0 = previous
            return s0 + (l0 - target) / (l0 - loss) * (step - s0)
        previous = (step, loss)
    return None


def speed_section(arms: list, baseline: str | None) -> list[str]:
    """Markdown lines: per arm, its mean seconds per step, the seconds its mean validation curve
    over seeds takes to reach the baseline's final validation loss, and that time over the
    baseline's. Empty when the baseline has no completed curve or no training time."""
    if not arms:
        return []
    base = resolve_baseline(arms, baseline)
    curves, scales = {}, {}
    for a in arms:
        done = completed_curves(a)
        band, scale = seed_band([j.curve for j in done]), arm_scale(seconds_per_step, done)
        if band is not None and scale:
            curves[a.label], scales[a.label] = list(zip(band[0].tolist(), band[1].tolist())), scale
    if base not in curves:
        return []
    target = curves[base][-1][1]
    base_time = steps_to_reach(curves[base], target) * scales[base]
    lines = ["| arm | s/step | seconds to reach it | vs baseline |", "|---|---|---|---|"]
    for label, curve in curves.items():
        steps = steps_to_reach(curve, target)
        if steps is None:
            time, ratio = f"not reached in {curve[-1][0]} steps", "—"
        else:
            seconds = steps * scales[label]
            time, ratio = f"{seconds:,.1f}", f"{seconds / base_time:.2f}x" if base_time > 0 else "—"
        lines.append(f"| {label} | {scales[label]:.3f} | {time} | {ratio} |")
    return ["## Speed at equal quality\n",
            f"Training seconds until each arm's validation loss (the mean curve over its completed "
            f"seeds) first reaches the baseline's final one, {target:.4f}: the step, interpolated "
            "linearly between validations, times the arm's mean training seconds per step "
            "(validations and checkpoint writes included). Below 1x: the arm gets there sooner. "
            "Wall clock depends on the machine and its load: compare arms run alike.\n",
            "\n".join(lines) + "\n"]
