"""Statistics of an ablation over seeds, with scipy.stats.

Arms trained with the same seed see the same training windows in the same order, so two arms form
a paired design: the difference between them is taken seed by seed, which cancels what the seed
contributes to both (the data order, and the initialisation where shapes agree).

- ``mean_interval``: the mean of one arm over its seeds and a 95% Student-t interval.
- ``paired_comparison``: arm minus baseline over their common seeds: mean difference, its 95%
  t-interval, the two-sided paired t-test's p-value (``scipy.stats.ttest_rel``) and the minimum
  detectable difference (MDD).
- ``holm``: Holm's step-down correction of the p-values of several arms against one baseline.
- ``compare_to_baseline``: all of it for every arm, with a verdict: better / worse (the corrected
  p-value below ``alpha``; lower loss is better) or no detectable difference at n seeds.

The MDD is the smallest true mean difference that the two-sided paired t-test at level ``alpha``
(before the correction for several arms) detects with probability ``power`` (80%), given the
standard deviation of the differences the seeds showed: the delta with
P(|T| > t_{1-alpha/2, n-1}) = power for T ~ noncentral t(n - 1, delta * sqrt(n) / sd), computed
exactly with ``scipy.stats.nct`` (not the normal approximation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass
class Interval:
    mean: float
    low: float | None  # None with fewer than 2 values
    high: float | None
    n: int

    def format(self, fmt: str = ".4f") -> str:
        if self.low is None or self.high is None or self.low == self.high:
            return format(self.mean, fmt)
        return f"{format(self.mean, fmt)} [{format(self.low, fmt)}, {format(self.high, fmt)}]"


def mean_interval(values: list[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (one per seed)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        raise ValueError("mean_interval: no finite values")
    if len(x) < 2:
        return Interval(float(x.mean()), None, None, len(x))
    sem = stats.sem(x)
    if sem == 0:
        return Interval(float(x.mean()), float(x.mean()), float(x.mean()), len(x))
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return Interval(float(x.mean()), float(low), float(high), len(x))


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference a two-sided paired t-test at ``alpha`` detects with
    probability ``power`` over ``n`` pairs whose differences have standard deviation ``sd``."""
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:  # power at noncentrality nc, minus the target
        lower = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc)))  # scipy: nan far in the tail
        return float(stats.nct.sf(crit, df, nc)) + lower - power

    high = 1.0
    while shortfall(high) < 0:  # power grows with nc: bracket the root
        high *= 2
    nc = optimize.brentq(shortfall, 0.0, high)
    return float(nc * sd / math.sqrt(n))


@dataclass
class Comparison:
    arm: str
    baseline: str
    seeds: list  # the common seeds
    diff: Interval  # arm - baseline, mean over the common seeds with its interval
    p: float | None  # paired t-test, two-sided; None with fewer than 2 pairs
    mdd: float  # minimum detectable difference (see the module docstring)
    p_holm: float | None = None
    verdict: str = ""


def paired_comparison(arm: dict, baseline: dict, arm_name: str = "arm",
                      baseline_name: str = "baseline", confidence: float = 0.95,
                      alpha: float = 0.05, power: float = 0.8) -> Comparison:
    """``arm`` and ``baseline`` map seed -> value; compared over their common seeds."""
    seeds = [s for s in arm if s in baseline]
    a = np.asarray([arm[s] for s in seeds], dtype=float)
    b = np.asarray([baseline[s] for s in seeds], dtype=float)
    if len(seeds) == 0:
        raise ValueError(f"{arm_name} and {baseline_name} have no seed in common")
    d = a - b
    diff = mean_interval(list(d), confidence)
    p = None
    if len(seeds) >= 2:
        p = float(stats.ttest_rel(a, b).pvalue)
        if not math.isfinite(p):  # identical differences: zero difference -> p = 1, else 0
            p = 1.0 if np.all(d == 0) else 0.0
    sd = float(np.std(d, ddof=1)) if len(seeds) >= 2 else math.nan
    mdd = min_detectable_difference(sd, len(seeds), alpha, power) if len(seeds) >= 2 else math.inf
    return Comparison(arm_name, baseline_name, seeds, diff, p, mdd)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and does not count as a test)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))  # monotone step-down
        out[i] = running
    return out


def verdict(c: Comparison, alpha: float = 0.05, fmt: str = ".4f") -> str:
    n = len(c.seeds)
    if c.p_holm is None:
        return f"n/a: {n} common seed(s), a paired test needs 2"
    if c.p_holm < alpha:
        return "better" if c.diff.mean < 0 else "worse"
    return f"no detectable difference at {n} seeds (MDD {format(c.mdd, fmt)})"


def compare_to_baseline(values: dict[str, dict], baseline: str | None = None, alpha: float = 0.05,
                        power: float = 0.8) -> list[Comparison]:
    """``values``: arm -> {seed: value} (lower is better). Every arm but ``baseline`` (default:
    the first) against it, p-values Holm-corrected over the arms, each with its verdict."""
    if not values:
        return []
    baseline = baseline if baseline is not None else next(iter(values))
    if baseline not in values:
        raise ValueError(f"baseline: unknown arm {baseline!r}; valid choices: {', '.join(values)}")
    comps = [paired_comparison(v, values[baseline], name, baseline, alpha=alpha, power=power)
             for name, v in values.items() if name != baseline and set(v) & set(values[baseline])]
    for c, p in zip(comps, holm([c.p for c in comps])):
        c.p_holm = p
        c.verdict = verdict(c, alpha)
    return comps
