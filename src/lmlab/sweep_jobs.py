"""The jobs of a sweep directory as the report and rescoring read them: each job's overrides, run
record (``metrics.json``) and validation curve (the CSV logger's ``csv/metrics.csv``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmlab.run_record import RECORD_FILE, job_status, override_map, read_record


@dataclass
class Job:
    num: str
    path: Path
    overrides: list[str]
    metrics: dict
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val/loss)

    @property
    def status(self) -> str:
        return job_status(self.metrics)

    def override_map(self) -> dict[str, str]:
        return override_map(self.overrides)



def job_order(p: Path):
    """Job directories in number order (0, 1, ..., 10), named ones after them."""
    return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)


def read_curve(job_dir: Path, metric: str = "val/loss") -> list[tuple[int, float]]:
    """``metric`` per optimizer step as logged in training, by the CSV logger (empty without its
    file). Lightning logs a row with the step count from before the step it follows (the
    validation after 3 steps, and the third step's training loss, at step 2): the curve puts it
    after its step, where its checkpoint (``best-step3.ckpt``) is."""
    path = job_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    curve: dict[int, float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            v, step = row.get(metric), row.get("step")
            if v and step:
                curve.setdefault(int(float(step)) + 1, float(v))
    return sorted(curve.items())


def load_jobs(sweep_dir: Path) -> list[Job]:
    """The sweep's job directories (those with overrides or a run record), in job order."""
    jobs = []
    for d in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir()), key=job_order):
        ov_file, m_file = d / ".hydra" / "overrides.yaml", d / RECORD_FILE
        if not ov_file.is_file() and not m_file.is_file():
            continue  # not a job directory
        metrics = read_record(d)
        overrides = (yaml.safe_load(ov_file.read_text()) if ov_file.is_file() else None) or \
            metrics.get("overrides", [])
        jobs.append(Job(d.name, d, [str(o) for o in overrides], metrics, read_curve(d)))
    return jobs
