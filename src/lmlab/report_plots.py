"""The report's figures (matplotlib, Agg): validation loss against steps, training tokens,
training FLOPs and training seconds, one colour per arm, the mean over the arm's completed seeds
as a line and their spread (min to max) as a band; and loss against evaluation length (length
extrapolation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_band(curves: list[list[tuple[int, float]]]):
    """(steps, mean, low, high) over the steps every curve has; None if there are none."""
    common = set.intersection(*(set(s for s, _ in c) for c in curves)) if curves else set()
    if not common:
        return None
    steps = np.array(sorted(common))
    ys = np.array([[dict(c)[s] for s in steps] for c in curves])  # (seeds, steps)
    return steps, ys.mean(0), ys.min(0), ys.max(0)


def seconds_per_step(metrics: dict) -> float | None:
    """A run's training wall clock (its validations and checkpoint writes included) over its
    steps. On the time axis each validation sits at its step times this, so an arm that learns as
    much per step but runs slower lies to the right."""
    seconds, steps = metrics.get("train_time_s"), metrics.get("steps")
    return seconds / steps if seconds and steps else None


AXES = (("step", lambda m: 1.0),
        ("training tokens", lambda m: m.get("tokens_per_step")),
        ("training FLOPs", lambda m: (m.get("tokens_per_step") or 0) * m.get("flops_per_token", 0) or None),
        ("training seconds", seconds_per_step))


def arm_scale(scale_of, jobs: list) -> float | None:
    """One arm's step-to-axis factor: the mean over its jobs (seeds differ in speed, not in
    tokens or FLOPs per step); None when a job lacks the figure."""
    scales = [scale_of(j.metrics) for j in jobs]
    return float(np.mean(scales)) if scales and None not in scales else None


def completed_curves(arm) -> list:
    """The arm's completed jobs that have a validation curve: the ones its lines are drawn from."""
    return [j for j in arm.jobs if j.status == "completed" and j.curve]


def val_loss_figure(arms: list):
    """Four panels (steps, tokens, FLOPs, seconds); None if no job has a validation curve yet."""
    if not any(j.curve for a in arms for j in a.jobs):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(AXES), figsize=(16, 4.0), dpi=80, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (xlabel, scale_of) in zip(axes, AXES):
        for i, arm in enumerate(arms):
            color = colors[i % len(colors)]
            done = completed_curves(arm)
            scale = arm_scale(scale_of, done)
            band = seed_band([j.curve for j in done])
            if band is not None and scale:
                steps, mean, low, high = band
                ax.plot(steps * scale, mean, color=color, label=f"{arm.label} (n={len(done)})")
                if len(done) > 1:
                    ax.fill_between(steps * scale, low, high, color=color, alpha=0.2, lw=0)
            for j in arm.jobs:  # unfinished jobs: their own dashed curve, steps only
                if j.status != "completed" and j.curve and xlabel == "step":
                    s, v = zip(*j.curve)
                    ax.plot(s, v, "--", color=color, alpha=0.7)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss")
    if axes[0].get_legend_handles_labels()[0]:  # none while no job has completed
        axes[0].legend(fontsize=7)
    fig.suptitle("validation loss: mean over seeds, band min-max (dashed: running or failed); "
                 "seconds: each arm's mean training time per step", fontsize=9)
    fig.tight_layout()
    return fig


def plot_val_loss(arms: list, path: Path) -> bool:
    """Save ``val_loss_figure`` to ``path``; False if there was nothing to plot."""
    fig = val_loss_figure(arms)
    if fig is None:
        return False
    fig.savefig(path)
    _pyplot().close(fig)
    return True


def plot_extrapolation(series: dict[str, tuple[list[int], list[float | None]]], path: Path,
                       trained: int | None = None) -> None:
    """Loss against evaluation length per arm: ``series`` label -> (lengths, mean losses; None
    where the arm cannot run, e.g. a learned table past its rows)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=80)
    for label, (lengths, losses) in series.items():
        pts = [(n, v) for n, v in zip(lengths, losses) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    if trained:
        ax.axvline(trained, color="grey", ls=":", lw=1, label="trained context")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation context length (tokens)")
    ax.set_ylabel("loss (mean over seeds)")
    ax.set_title("length extrapolation (missing points: n/a)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
