"""python -m lmlab.report refuses a bad command line in argparse's error line (exit status 2,
as rescore does) and writes nothing: a --baseline that is part of several arms, an --out that is
a file, one job's directory given for its sweep."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lmlab.comparison import resolve_baseline
from lmlab.report import main


def test_a_baseline_in_several_labels_is_ambiguous_not_unknown():
    arms = [SimpleNamespace(label=x) for x in ("model/attention=mha", "model/attention=mqa")]
    assert resolve_baseline(arms, "mqa") == "model/attention=mqa"
    with pytest.raises(ValueError, match=r"^baseline: 'model' is part of 2 arms \(model/attention=mha, "
                                         r"model/attention=mqa\); give more of the label$"):
        resolve_baseline(arms, "model")
    with pytest.raises(ValueError, match="^baseline: unknown arm 'gqa'; valid choices: "):
        resolve_baseline(arms, "gqa")


@pytest.fixture
def sweep(tmp_path):
    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "overrides": ["seed=0"]}))
    return tmp_path / "sweep"


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_out_that_is_a_file(sweep, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    line = refused([str(sweep), "--out", str(tmp_path / "a_file")], capsys)
    assert line == f"python -m lmlab.report: error: --out: {tmp_path / 'a_file'} is a file, not a directory"
    assert (tmp_path / "a_file").read_text() == "x"


def test_a_job_directory_for_its_sweep(sweep, capsys):
    line = refused([str(sweep / "0")], capsys)
    assert line.endswith("is it a multirun directory? (it is one job's directory: pass its parent)")
    assert sorted(p.name for p in (sweep / "0").iterdir()) == ["metrics.json"]  # nothing written
