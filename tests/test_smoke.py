"""The CI smoke benchmark: the real pipeline on a tiny real Fashion-MNIST subset, then the report.
Asserts invariants only (never exact accuracies): a row per run x checkpoint x eval attack, accuracy ordered
natural >= pgd20 >= aa up to noise, the LaTeX table names every method. Only the last checkpoint is evaluated:
AutoAttack costs about a minute and a half per call on 2 CPU cores whatever the number of points (FAB-T's and
Square's iterations dominate), and the smoke is about the pipeline, not the checkpoint choice."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from bench.data import DEBIAN_FASHION_MNIST

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(),
                                                   reason="Debian's dataset-fashion-mnist is not installed")]
ATTACKS = ["natural", "pgd20", "cw20", "aa"]
ARGS = ["--methods", "at,irat,lrat", "--train-attack", "pgd", "--dataset", "fashion-mnist", "--train-subset", "512",
        "--val-size", "128", "--test-subset", "64", "--epochs", "1", "--eval-attacks", ",".join(ATTACKS),
        "--checkpoints", "last"]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=900)


def test_smoke_benchmark_end_to_end(tmp_path):
    results, reports = tmp_path / "results", tmp_path / "reports"
    run = bench("run", *ARGS, "--results", str(results))
    assert run.returncode == 0, run.stderr[-3000:]
    rep = bench("report", "--results", str(results), "--out", str(reports), "--checkpoint", "last")
    assert rep.returncode == 0, rep.stderr[-3000:]

    rows = list(csv.DictReader(open(reports / "results.csv")))
    cells = {(r["method"], r["checkpoint"]) for r in rows}
    assert cells == {(m, "last") for m in ("at", "gairat", "lrat")}
    for method, ckpt in cells:
        acc = {r["eval_attack"]: float(r["accuracy"]) for r in rows if (r["method"], r["checkpoint"]) == (method, ckpt)}
        assert set(ATTACKS) <= set(acc)
        assert all(0.0 <= a <= 1.0 for a in acc.values())
        noise = 3 / 64  # a few points of slack for the random starts
        assert acc["aa"] <= acc["pgd20"] + noise and acc["pgd20"] <= acc["natural"] + noise
        assert acc["worst"] <= min(acc[a] for a in ATTACKS) + 1e-9
        assert all(int(r["n_eval"]) == 64 for r in rows)

    tex = (reports / "table.tex").read_text()
    assert all(label in tex for label in ("AT", "GAIRAT", "LRAT")) and r"\toprule" in tex
    assert any(p.suffix == ".png" for p in reports.iterdir())

    again = bench("run", *ARGS, "--results", str(results))
    assert again.returncode == 0 and "3 already finished" in again.stderr  # nothing retrained
