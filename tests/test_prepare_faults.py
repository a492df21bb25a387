"""Preparing a corpus under faults and limits: a killed preparation is never trusted, and memory
stays bounded as the corpus grows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lmlab.data.corpus import shakespeare_plays
from lmlab.data.manifest import read_manifest
from lmlab.data.prepare import prepare


def test_a_killed_preparation_is_never_trusted_and_is_rebuilt(tmp_path):
    """SIGKILL the preparation once the train shards exist: no manifest, refused, rebuilt."""
    src = tmp_path / "big.jsonl"
    plays = list(shakespeare_plays().values())
    with open(src, "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": plays[i % len(plays)]}) + "\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.data.prepare", str(src), str(out),
                             "--val-fraction", "0.3", "--shard-mb", "0.01"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list((out / "train").glob("shard-*.bin")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not (out / "manifest.json").exists():  # killed in time (the usual case)
        with pytest.raises(ValueError, match="is not a prepared corpus"):
            read_manifest(out)
    m = prepare(str(src), str(out), val_fraction=0.3)
    assert read_manifest(out) == m and m["tokens"]["val"] > 0


MEMORY_PROBE = textwrap.dedent("""
    import json, random, resource, sys
    from lmlab.data.prepare import prepare
    src, out, mb = sys.argv[1], sys.argv[2], float(sys.argv[3])
    random.seed(0)
    words = open(sys.argv[4]).read().split()
    with open(src, "w") as f:  # documents of 2,000 random words of a real text
        n = 0
        while n < mb * 2**20:
            line = json.dumps({"text": " ".join(random.choices(words, k=2000))}) + "\\n"
            f.write(line); n += len(line)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = prepare(src, out, val_fraction=0.01, workers=2, shard_mb=1)
    print(json.dumps({"tokens": m["tokens"], "before_kb": before,
                      "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
""")


def peak_rss_mb(tmp_path, corpus_mb):
    words = tmp_path / "words.txt"
    words.write_text(" ".join(list(shakespeare_plays().values())[:3]))
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / f"c{corpus_mb}.jsonl"),
                           str(tmp_path / f"o{corpus_mb}"), str(corpus_mb), str(words)],
                          capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(r["self_kb"], r["children_kb"]) / 1024, r["before_kb"] / 1024


def check_memory_bounded(tmp_path, corpus_mb, cap_mb):
    small, _ = peak_rss_mb(tmp_path, 1)
    big, _ = peak_rss_mb(tmp_path, corpus_mb)
    growth = big - small  # what the data costs above the imports (torch, datasets)
    print(f"peak RSS: {small:.0f} MB for 1 MB of JSONL, {big:.0f} MB for {corpus_mb} MB")
    assert corpus_mb >= 3 * cap_mb and growth < cap_mb


def test_preparation_memory_is_bounded(tmp_path):
    check_memory_bounded(tmp_path, corpus_mb=12, cap_mb=4)


@pytest.mark.slow
def test_preparation_memory_is_bounded_large(tmp_path):
    check_memory_bounded(tmp_path, corpus_mb=300, cap_mb=100)
