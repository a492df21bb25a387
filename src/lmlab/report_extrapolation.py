"""The report's length-extrapolation section: for every arm whose jobs scored their best
checkpoint at several context lengths (``extrapolate=[...]``, metrics.json ``extrapolation``), the
mean loss over seeds and its 95% interval at each length, as a table and a plot."""

from __future__ import annotations

from pathlib import Path

from lmlab.report_plots import plot_extrapolation
from lmlab.stats import mean_interval


def arm_lengths(arm) -> dict[int, list[float | None]]:
    """evaluation length -> the losses of the arm's completed seeds (None: n/a)."""
    out: dict[int, list[float | None]] = {}
    for j in arm.jobs:
        ex = j.metrics.get("extrapolation") if j.status == "completed" else None
        for row in (ex or {}).get("extrapolation", []):
            out.setdefault(row["length"], []).append(row["loss"])
    return out


def extrapolation_section(arms: list, out_dir: Path) -> list[str]:
    per_arm = {a.label: arm_lengths(a) for a in arms}
    per_arm = {k: v for k, v in per_arm.items() if v}
    if not per_arm:
        return []
    lengths = sorted({n for v in per_arm.values() for n in v})
    ex = next(j.metrics["extrapolation"] for a in arms for j in a.jobs
              if j.status == "completed" and j.metrics.get("extrapolation"))
    trained = ex.get("context_length")
    cols = [f"{n} ({n / trained:g}x)" if trained else str(n) for n in lengths]
    lines = ["| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    series = {}
    for label, by_length in per_arm.items():
        cells, means = [], []
        for n in lengths:
            losses = by_length.get(n, [])
            if not losses or any(v is None for v in losses):
                cells.append("n/a")
                means.append(None)
                continue
            iv = mean_interval(losses)
            cells.append(iv.format())
            means.append(iv.mean)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        series[label] = (lengths, means)
    plot_extrapolation(series, out_dir / "extrapolation.png", trained)
    return ["## Length extrapolation\n",
            f"Loss of each job's best checkpoint on the {ex.get('split', 'held-out')} split at "
            f"multiples of the trained context ({trained} tokens): every window of the split at "
            "each length (the same text, with more or less context), mean over seeds [95% "
            "t-interval]. n/a: the model cannot encode those positions (a learned table has no "
            "rows past its length).\n",
            "\n".join(lines) + "\n",
            "![loss against evaluation length](extrapolation.png)\n"]
