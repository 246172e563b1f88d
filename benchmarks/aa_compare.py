"""The harness's AutoAttack (composed per component, resumable) against pyautoattack's own
run_standard_evaluation on the same model and points: wall time of each and whether the flags agree.

    python benchmarks/aa_compare.py RESULTS [N_POINTS] [THREADS]     # the first `at` run of the store

A benchmark, not a test: run it on an otherwise idle machine.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from pyautoattack import AutoAttack

from bench.data import load_data, to_float
from bench.evaluation.attacks import run_eval_attack
from bench.store import load_run


def main(results: str, n: int = 50, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    run = next(r for r in sorted(Path(results, "runs").iterdir())
               if json.loads((r / "config.json").read_text())["train"]["method"] == "at")
    model, config = load_run(run)
    t = config["train"]
    data = load_data(t["dataset"], val_size=t["val_size"], train_subset=t["train_subset"], test_subset=n)
    x, y = to_float(data.test.x), data.test.y
    t0 = time.perf_counter()
    ours = run_eval_attack(model, x, y, "aa", eps=t["eps"])
    harness_s = time.perf_counter() - t0
    adversary = AutoAttack(model, norm="Linf", eps=t["eps"], version="standard", seed=0)
    t0 = time.perf_counter()
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=256)
    theirs_s = time.perf_counter() - t0
    theirs = (y_adv == y).cpu()
    return {"run": run.name, "points": n, "threads": threads, "harness_s": round(harness_s, 1),
            "harness_components": ours.info.get("aa_component_seconds"),
            "pyautoattack_run_standard_evaluation_s": round(theirs_s, 1),
            "same_flags": bool(torch.equal(ours.flags, theirs)), "robust": int(ours.flags.sum())}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))))
