"""Compare the arms of a sweep: ``python -m lmlab.report outputs/multirun/<date>/<time>``.

Reads each job directory of the sweep (``<job>/.hydra/overrides.yaml``, ``<job>/metrics.json``
written by ``train.py``, ``<job>/csv/metrics.csv`` written by the CSV logger) and writes
``report.md``, ``val_loss.png`` and ``extrapolation.png`` into the sweep directory. Jobs that differ
only in ``seed`` are one arm: their numbers are shown as mean ± std over the seeds, then compared
with a baseline arm (``lmlab.comparison``: intervals, paired tests, verdicts) and timed to its
final loss (``lmlab.report_speed``). Works on a running sweep too: a job without a final
``metrics.json`` is shown as running, with the validation curve it has so far.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmlab.comparison import comparison_rows
from lmlab.report_extrapolation import extrapolation_section
from lmlab.report_plots import plot_val_loss
from lmlab.report_speed import speed_section
from lmlab.run_record import RECORD_FILE, override_key, swept_keys
from lmlab.sweep_jobs import Job, load_jobs

SEED_KEYS = ("seed",)
RUN_KEYS = ("ckpt_path", "module.extend")  # how a job ran (resumed in place), not what it is


@dataclass
class Arm:
    label: str  # the arm's own overrides (those that vary across the sweep, seed aside)
    jobs: list[Job]


def varied_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in command-line order."""
    maps = [j.override_map() for j in jobs]
    keys: list[str] = []
    for m in maps:
        keys += [k for k in m if k not in keys]
    return [k for k in keys if len({m.get(k) for m in maps}) > 1]


def group_arms(jobs: list[Job], swept: set[str] = frozenset()) -> tuple[list[Arm], list[str], list[str]]:
    """(arms, varied keys, overrides common to all jobs). ``swept``: keys the sweep varies."""
    differing = varied_keys(jobs)
    present = {k for j in jobs for k in j.override_map()}
    varied = [k for j in jobs for k in j.override_map() if k in present and k not in RUN_KEYS
              and (k in differing or k in swept)]
    varied = list(dict.fromkeys(varied))
    arms: dict[str, Arm] = {}
    for j in jobs:
        label = " ".join(o for o in j.overrides
                         if override_key(o) in varied and override_key(o) not in SEED_KEYS)
        label = label or "(all)"
        arms.setdefault(label, Arm(label, [])).jobs.append(j)
    common = [o for o in (jobs[0].overrides if jobs else []) if override_key(o) not in varied]
    return list(arms.values()), varied, common


def stat(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(set(values)) == 1:
        return format(values[0], fmt)
    return f"{format(mean, fmt)} ± {format(statistics.stdev(values), fmt)}"


def arm_status(arm: Arm) -> str:
    return ", ".join(f"{n} {s}" for s, n in Counter(j.status for j in arm.jobs).items())


def arm_row(arm: Arm) -> dict[str, str]:
    done = [j.metrics for j in arm.jobs if j.status == "completed"]

    def col(key, fmt, fallback=None):
        return stat([m.get(key, m.get(fallback) if fallback else None) for m in done], fmt)

    seeds = [str(j.override_map().get("seed", j.metrics.get("seed", "default"))) for j in arm.jobs]
    return {
        "arm": arm.label,
        "seeds": ",".join(seeds),
        "status": arm_status(arm),
        "params": col("params", ",.0f"),
        "active params": col("active_params", ",.0f", fallback="params"),
        "tokens/s": col("tokens_per_s", ",.0f"),
        "MFU": col("mfu", ".1%"),
        "steps": col("steps", ".0f"),
        "train time (s)": col("train_time_s", ",.0f"),
        "final val loss": col("final_val_loss", ".4f", fallback="val_loss"),
        "final val ppl": col("final_val_ppl", ".2f", fallback="val_ppl"),
        "best val loss": col("best_val_loss", ".4f", fallback="val_loss"),
        "best val ppl": col("best_val_ppl", ".2f", fallback="val_ppl"),
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no jobs)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter, and portable)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def make_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                baseline: str | None = None) -> Path:
    """Write ``report.md`` and its plots for the sweep in ``sweep_dir``; return report.md.
    ``baseline``: the arm the others are compared with (its label, or a unique part of it);
    default: the first arm."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no such sweep directory: {sweep_dir}")
    jobs = load_jobs(sweep_dir)
    if not jobs:
        inside = " (it is one job's directory: pass its parent)" if (sweep_dir / RECORD_FILE).is_file() else ""
        raise FileNotFoundError(f"{sweep_dir} holds no jobs (no <job>/.hydra/overrides.yaml or "
                                f"<job>/{RECORD_FILE}): is it a multirun directory?{inside}")
    out = Path(out_dir) if out_dir else sweep_dir
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out: {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    arms, varied, common = group_arms(jobs, swept_keys(sweep_dir) or set())
    rows = [arm_row(a) for a in arms]
    n_status = Counter(j.status for j in jobs)
    parts = [
        f"# Sweep report: {sweep_dir.name if sweep_dir.name else sweep_dir}\n",
        f"Sweep directory: `{_shown(sweep_dir)}`  \n"
        f"Jobs: {len(jobs)} ({', '.join(f'{n} {s}' for s, n in n_status.items()) or 'none'})  \n"
        f"Varied: {', '.join(f'`{k}`' for k in varied) or 'nothing'}  \n"
        f"Common overrides: {' '.join(f'`{o}`' for o in common) or 'none'}\n",
        "One row per arm; numbers are mean ± std over the arm's completed seeds. Final: the last "
        "validation during training; best: the best checkpoint's validation loss.\n",
        markdown_table(rows),
    ]
    parts += comparison_section(arms, baseline)
    parts += speed_section(arms, baseline)
    if plot_val_loss(arms, out / "val_loss.png"):
        parts.append("![validation loss per arm](val_loss.png)\n")
    parts += extrapolation_section(arms, out)
    parts += unfinished_section(jobs, varied)
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def unfinished_section(jobs: list[Job], varied: list[str]) -> list[str]:
    """The jobs that failed or were interrupted (with their error) and those still running (with
    their last validation), each named by its number and its values of the varied keys."""
    def arm_of(j: Job) -> str:
        return " ".join(o for o in j.overrides if override_key(o) in varied)

    parts = []
    failed = [j for j in jobs if j.status in ("failed", "interrupted")]
    if failed:
        parts.append("## Failed or interrupted jobs\n")
        parts += [f"- job {j.num} (`{arm_of(j)}`): {j.metrics.get('error', 'unknown error')}"
                  for j in failed]
        parts.append("")
    running = [j for j in jobs if j.status == "running"]
    if running:
        parts.append("## Running jobs\n")
        for j in running:
            last = (f"step {j.curve[-1][0]}, val loss {j.curve[-1][1]:.4f}" if j.curve
                    else "no validation yet")
            parts.append(f"- job {j.num} (`{arm_of(j)}`): {last}")
        parts.append("")
    return parts


def comparison_section(arms: list[Arm], baseline: str | None) -> list[str]:
    rows, title = comparison_rows(arms, baseline)
    if not rows:
        return []
    where = ("the test split (checkpoint chosen on the validation windows)" if title == "test loss"
             else "the last validation during training (no test split recorded)")
    return ["## Comparison with the baseline\n",
            f"Compared: {title}, from {where}. Intervals: 95% Student-t over seeds. Δ: arm minus "
            "baseline, paired by seed over their common seeds; p: two-sided paired t-test, in "
            "brackets Holm-corrected over the arms; verdict at corrected p < 0.05 (lower loss is "
            "better). MDD: the smallest true difference the seeds detect with 80% power (paired "
            "t-test at 0.05, noncentral t). Flagged arms (unfinished, time-limited, fewer steps or "
            "tokens than the longest job) get no verdict.\n",
            markdown_table(rows)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lmlab.report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="a multirun directory, e.g. outputs/multirun/<date>/<time>")
    p.add_argument("--out", default=None, help="where to write report.md and plots (default: sweep_dir)")
    p.add_argument("--baseline", default=None, help="the arm compared with (default: the first)")
    args = p.parse_args(argv)
    try:
        path = make_report(args.sweep_dir, args.out, args.baseline)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        p.error(str(err))  # one line and exit status 2, as rescore's
    print(path.read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
