"""Benchmark: `bench report` on a synthetic store of 1,000 finished runs (10 method/attack rows x 100 seeds,
natural, pgd20, cw20, aa + worst on 1,000 test points, 10-epoch histories). The test asserts only a generous
bound; run this file directly for the numbers (it runs this test through pytest, printing them):

    .venv/bin/python tests/test_report_speed.py [runs]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.report import Selection, write_report
from bench.store import Store

ROWS = [("at", "pgd"), ("at", "cw"), ("at", "saa"), ("gairat", "pgd"), ("gairat", "cw"), ("mail", "pgd"),
        ("lsat", "cw"), ("lsat", "saa"), ("lrat", "cw"), ("lrat", "saa+cw")]
ACCS = {"natural": 0.82, "pgd20": 0.5, "cw20": 0.48, "aa": 0.45}
RUNS_ENV = "BENCH_REPORT_SPEED_RUNS"  # set by `python tests/test_report_speed.py [runs]`


def build_store(root: Path, add_run, random_flags, runs: int = 1000, n: int = 1000) -> Store:
    """Written with Store.write_eval and DONE markers like a real store (`add_run`, `random_flags`: the
    conftest fixtures); fsync is skipped while building (durability of a throwaway store is not what is
    measured)."""
    store = Store(root)
    fsync, os.fsync = os.fsync, lambda fd: None
    try:
        for i in range(runs):
            method, attack = ROWS[i % len(ROWS)]
            seed = i // len(ROWS)
            rng = np.random.default_rng(i)
            shift = rng.normal(0, 0.02)
            add_run(store, method, attack, seed, random_flags(rng, n, {a: v + shift for a, v in ACCS.items()}),
                    epochs=10)
    finally:
        os.fsync = fsync
    return store


def render(root: Path, out: Path) -> float:
    t0 = time.perf_counter()
    write_report(root, out, Selection())
    return time.perf_counter() - t0


@pytest.mark.slow
def test_a_thousand_runs_render_in_seconds(tmp_path, add_run, random_flags):
    runs = int(os.environ.get(RUNS_ENV, "1000"))
    t0 = time.perf_counter()
    build_store(tmp_path / "results", add_run, random_flags, runs)
    print(f"\nbuilt a store of {runs} runs in {time.perf_counter() - t0:.1f}s")
    seconds = render(tmp_path / "results", tmp_path / "reports")
    print(f"bench report (tables, statistics, plots, pdflatex): {seconds:.1f}s")
    if runs == 1000:  # the test; other sizes (run directly) only print the numbers
        assert (tmp_path / "reports" / "table.tex").read_text().count("100 seeds") == 1
        assert seconds < 90, f"bench report took {seconds:.1f}s on 1,000 runs"  # generous: shared 2-core CI


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.environ[RUNS_ENV] = sys.argv[1]
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
