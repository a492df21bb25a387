"""Length extrapolation of a finished sweep, after the fact:

    python -m lmlab.rescore outputs/multirun/<date>/<time> --extrapolate 1,2,4,8

For every completed job, loads the checkpoint its run kept as best (chosen on validation), scores
it on every window of the held-out test split (else validation) at each multiple of its trained
context, and stores the result as ``extrapolation`` in the job's metrics.json, where
``python -m lmlab.report`` finds it. Every length scores the whole split, so the lengths differ
only in how much context each token has.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.errors import UserError, positive_list
from lmlab.run_record import job_status, read_record, run_config, write_record
from lmlab.sweep_jobs import job_order

DATA_KEYS = ("source", "path", "val_docs", "test_docs", "val_fraction", "tokenizer")


def rescore_job(job_dir: Path, factors: list[float], cache_dir: str) -> dict | None:
    from lmlab.checkpoint import load_model
    from lmlab.data.datamodule import TokenDataModule  # Lightning: once the command line is good
    from lmlab.evaluation import score
    from lmlab.extrapolation import check_factors

    record = read_record(job_dir)
    if job_status(record) != "completed" or not record.get("checkpoint"):
        return None
    model = load_model(record["checkpoint"], "cpu")
    check_factors(factors, model.context_length)
    data = run_config(job_dir)["data"]
    datamodule = TokenDataModule(**{k: data[k] for k in DATA_KEYS if k in data},
                                 context_length=model.context_length, cache_dir=cache_dir)
    split = "test" if datamodule.has_test_split else "val"
    result = score(model, datamodule, split, factors, max_windows=None)
    record["extrapolation"] = {k: result[k] for k in ("split", "context_length", "extrapolation")}
    write_record(job_dir, record)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lmlab.rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="a multirun directory, e.g. outputs/multirun/<date>/<time>")
    p.add_argument("--extrapolate", default="1,2,4,8", type=positive_list(
        lambda f: float(f) if "." in f else int(f),
        "numbers > 0 separated by commas, multiples of the trained context, e.g. 1,2,4,8"),
                   help="multiples of the trained context (default: 1,2,4,8)")
    p.add_argument("--cache-dir", default="outputs/cache", help="the token cache (data.cache_dir)")
    args = p.parse_args(argv)
    sweep = Path(args.sweep_dir)
    if not sweep.is_dir():
        p.error(f"no such sweep directory: {sweep}")
    jobs = sorted((d for d in sweep.iterdir() if (d / "metrics.json").is_file()),
                  key=job_order)
    if not jobs:
        p.error(f"{sweep} holds no jobs (no <job>/metrics.json): is it a multirun directory?")
    from lmlab.evaluation import summary

    for job in jobs:
        try:
            result = rescore_job(job, args.extrapolate, args.cache_dir)
        except (UserError, ValueError) as err:
            raise SystemExit(f"lmlab.rescore: error: job {job.name}: {err}") from None
        print(f"job {job.name}: " + (summary(result) if result else "skipped (not completed)"),
              flush=True)


if __name__ == "__main__":
    main()
