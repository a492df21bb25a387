"""Ablation sweeps end to end: real multiruns through the command line, the report, W&B offline
runs and per-arm failures (the sweep configs themselves: test_sweep_configs.py)."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lmlab.report import make_report
from lmlab.sweep_jobs import read_curve
from tests.conftest import FEW_TEST_WINDOWS, ROOT, compose_cfg

SMALL = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.context_length=16",
         "data.batch_size=4", "trainer.max_steps=4", "trainer.val_check_interval=2",
         "data.val_windows=4", "sample.max_new_tokens=5", "module.warmup_steps=2", FEW_TEST_WINDOWS]


def multirun(tmp_path: Path, cache_dir: Path, *overrides: str) -> Path:  # noqa: D401
    """``python train.py -m <overrides>`` in a subprocess; returns the sweep directory."""
    sweep = tmp_path / "sweep"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "train.py", "-m", *overrides, *SMALL,
           f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def overrides_of(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def val_curve(job: Path) -> list[tuple[int, float]]:
    with (job / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["val/loss"]]
    return [(int(r["step"]), float(r["val/loss"])) for r in rows]


def table_rows(report: str) -> list[dict[str, str]]:
    table = report[report.index("\n|"):].split("\n\n", 1)[0]  # the first table: one row per arm
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


# --- data: every arm sees the same batches for a given seed -----------------------------------

def test_arms_see_the_same_data_in_the_same_order(cache_dir):
    from lmlab.training import build_datamodule

    def batches(overrides):
        cfg = compose_cfg(overrides + ["model.context_length=16", "data.batch_size=4",
                                       f"paths.cache_dir={cache_dir}"])
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        return [next(it) for _ in range(3)]

    # (no Trainer here: train_samples, planned from trainer.max_steps at fit time, is given)
    a = batches(["model/attention=mha", "model/position=learned", "seed=1", "data.train_samples=1600"])
    # another arm, another width and another run length (so another number of samples)
    b = batches(["model/attention=mqa", "model/position=rope", "model.d_model=64",
                 "trainer.max_steps=7", "seed=1", "data.train_samples=28"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = batches(["model/attention=mha", "model/position=learned", "seed=2", "data.train_samples=1600"])
    assert not torch.equal(a[0], c[0])


# --- 1. a 2x2 grid through the command line, then the report ---------------------------------

def test_multirun_grid_and_report(tmp_path, cache_dir):
    sweep = multirun(tmp_path, cache_dir, "model/attention=mha,mqa", "model/position=learned,alibi")
    jobs = job_dirs(sweep)
    assert len(jobs) == 4
    from lmlab.report import main

    main([str(sweep)])
    report = (sweep / "report.md").read_text()
    assert (sweep / "val_loss.png").stat().st_size > 1000
    rows = table_rows(report)
    assert len(rows) == 4
    for job in jobs:
        m = json.loads((job / "metrics.json").read_text())
        assert m["status"] == "completed"
        assert "`Trainer.fit` stopped" in (job / "train.log").read_text()  # Lightning's lines too
        ov = overrides_of(job)
        label = " ".join(o for o in ov if o.startswith(("model/attention", "model/position")))
        (row,) = [r for r in rows if r["arm"] == label]
        curve = val_curve(job)
        assert row["status"] == "1 completed"
        assert row["params"] == f"{m['params']:,}" == row["active params"]
        assert row["tokens/s"] == f"{m['tokens_per_s']:,.0f}" and row["MFU"] == f"{m['mfu']:.1%}"
        assert row["train time (s)"] == f"{m['train_time_s']:,.0f}"
        # the CSV log: the validations during training (the best checkpoint's is not logged again)
        assert m["final_val_loss"] == pytest.approx(curve[-1][1], abs=1e-6)
        assert m["val_loss"] == pytest.approx(min(v for _, v in curve), abs=1e-6)
        # the report's curve puts each validation after its step, where its checkpoint is
        best_step = int(Path(m["checkpoint"]).stem.removeprefix("best-step"))
        assert dict(read_curve(job))[best_step] == pytest.approx(m["val_loss"], abs=1e-6)
        assert [s for s, _ in read_curve(job)] == [2, 4]  # val_check_interval=2, max_steps=4
        assert float(row["final val loss"]) == pytest.approx(m["final_val_loss"], abs=1e-4)
        assert float(row["best val loss"]) == pytest.approx(m["best_val_loss"], abs=1e-4)
        assert float(row["best val loss"]) == pytest.approx(min(v for _, v in curve), abs=1e-4)
        assert float(row["best val ppl"]) == pytest.approx(m["best_val_ppl"], abs=0.01)


def test_report_groups_seeds_and_shows_running_jobs(tmp_path):
    """Jobs that differ only by seed are one arm (mean ± std); a job without final metrics is
    shown as running."""
    sweep = tmp_path / "s"
    for num, (arm, seed, loss) in enumerate([("rope", 0, 5.0), ("rope", 1, 6.0), ("alibi", 0, 4.0)]):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model/position={arm}", f"seed={seed}", "trainer.max_steps=4"]))
        status = "running" if arm == "alibi" else "completed"
        (job / "metrics.json").write_text(json.dumps(
            {"status": status, "params": 100, "tokens_per_s": 10.0, "steps": 4,
             "final_val_loss": loss, "best_val_loss": loss, "best_val_ppl": 2.0, "final_val_ppl": 2.0}
            if status == "completed" else {"status": "running"}))
        (job / "csv").mkdir()
        (job / "csv" / "metrics.csv").write_text(f"epoch,step,val/loss\n0,1,{loss + 1}\n0,3,{loss}\n")
    report = make_report(sweep).read_text()
    rows = {r["arm"]: r for r in table_rows(report)}
    assert set(rows) == {"model/position=rope", "model/position=alibi"}
    assert rows["model/position=rope"]["best val loss"] == "5.5000 ± 0.7071"
    assert rows["model/position=rope"]["seeds"] == "0,1"
    assert rows["model/position=alibi"]["status"] == "1 running"
    assert "## Running jobs" in report and "step 4, val loss 4.0000" in report  # logged at 3


def test_report_labels_arms_of_a_sweep_that_has_just_started(tmp_path):
    """One job so far: the arm is still named by what the sweep varies (from multirun.yaml)."""
    sweep, job = tmp_path / "s", tmp_path / "s" / "0"
    (job / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["+experiment/moe_arms=dense,moe", "seed=0", "trainer.max_steps=4"]},
        "sweeper": {"params": None}}}))
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["+experiment/moe_arms=dense", "seed=0", "trainer.max_steps=4"]))
    (job / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ValueError: bad"}))
    report = make_report(sweep).read_text()
    assert [r["arm"] for r in table_rows(report)] == ["+experiment/moe_arms=dense"]
    assert "- job 0 (`+experiment/moe_arms=dense`): ValueError: bad" in report


# --- 2. W&B offline: one run per job, config and metrics readable back ------------------------

def wandb_records(path: Path) -> list:
    """Parse an offline ``run-*.wandb`` file: a ':W&B' header then LevelDB-log records (32 KiB
    blocks, 7-byte chunk headers) of ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf = (b"" if kind in (1, 2) else buf) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full record or last chunk
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory):
    """Two arms logged to W&B (offline), the second diverging (learning rate 1e9)."""
    cache_dir = tmp_path_factory.getbasetemp() / "token-cache"
    return multirun(tmp_path_factory.mktemp("wandb"), cache_dir, "logger=wandb",
                    "module.lr=1e-3,1e9", "module.warmup_steps=1")


def test_wandb_offline_one_run_per_job(wandb_sweep):
    sweep = wandb_sweep
    for job, lr in zip(job_dirs(sweep), ["module.lr=0.001", "module.lr=1000000000.0"]):
        (run_dir,) = (job / "wandb").glob("offline-run-*")  # exactly one W&B run per job
        (run_file,) = run_dir.glob("run-*.wandb")
        recs = wandb_records(run_file)
        kinds = [r.WhichOneof("record_type") for r in recs]
        (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        assert run.display_name == f"{job.name}:{lr}"  # named by the swept override
        assert run.run_group == f"{sweep.parent.name}/{sweep.name}"  # grouped by sweep
        assert list(run.tags) == [lr]  # tagged by variant
        config = {u.key: json.loads(u.value_json) for r in recs
                  if r.WhichOneof("record_type") == "config" for u in r.config.update}
        # the whole resolved config
        assert config["model"]["d_model"] == 32 and config["trainer"]["max_steps"] == 4
        assert config["module"]["lr"] == float(lr.split("=")[1])
        (exit_rec,) = [r.exit for r in recs if r.WhichOneof("record_type") == "exit"]
        if job.name == "1":  # the diverging arm: its W&B run is closed as failed
            assert exit_rec.exit_code == 1
            continue
        assert exit_rec.exit_code == 0
        history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in r.history.item} for r in recs if r.WhichOneof("record_type") == "history"]
        logged = [(h["trainer/global_step"], h["val/loss"]) for h in history if "val/loss" in h]
        curve = val_curve(job)
        assert [s for s, _ in logged] == [s for s, _ in curve]  # the same numbers as the CSV log
        assert [v for _, v in logged] == pytest.approx([v for _, v in curve])
        # the generated sample, as a table
        assert any(k.startswith("samples") for h in history for k in h)
        (table,) = (run_dir / "files" / "media" / "table").glob("samples_*.table.json")
        sample = json.loads((job / "metrics.json").read_text())["sample"]
        assert json.loads(table.read_text())["data"][0][2] == sample
        summary = {u.key: json.loads(u.value_json) for r in recs
                   if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
        metrics = json.loads((job / "metrics.json").read_text())
        assert summary["best_val_loss"] == pytest.approx(metrics["best_val_loss"])
        assert "exit" in kinds


# --- 3. one arm diverges: recorded as failed, the others complete -----------------------------

def test_a_diverging_arm_fails_alone(wandb_sweep):
    sweep = wandb_sweep
    good, bad = (json.loads((j / "metrics.json").read_text()) for j in job_dirs(sweep))
    assert good["status"] == "completed" and good["steps"] == 4
    assert bad["status"] == "failed" and bad["error"].startswith("Diverged: non-finite")
    assert "module.lr=1000000000.0" in bad["overrides"]
    report = make_report(sweep).read_text()
    rows = {r["arm"]: r for r in table_rows(report)}
    assert rows["module.lr=1000000000.0"]["status"] == "1 failed"
    assert rows["module.lr=0.001"]["status"] == "1 completed"
    assert "## Failed or interrupted jobs" in report and "job 1 (`module.lr=1000000000.0`): Diverged" in report
