"""Time `make demo`'s exact commands in a temporary store and write where the time goes, as JSON.

    python benchmarks/demo_time.py --out docs/speed/demo-time.json      # or: bash benchmarks/demo-time.sh

The commands come from the Makefile (`make -s demo-commands`), so the benchmark cannot drift from the demo.
Phases: each command's wall time, data loading (the demo's splits loaded once more, timed alone), each training
epoch and its validation (history.json), each evaluation attack per run (eval_seconds; AutoAttack per
component where the row records it), the report, and the whole; plus the machine and the versions. A
benchmark, not a test: run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_commands(results: Path, reports: Path) -> list[str]:
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "demo-commands", f"DEMO_RESULTS={results}",
                          f"DEMO_REPORTS={reports}"], check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "pyautoattack", "lrat-bench"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    out["git_commit"] = commit + ("-dirty" if dirty.strip() else "")
    return out


def run_phases(results: Path) -> list[dict]:
    """Per run: its epochs (training and validation seconds) and its evaluation rows' seconds."""
    runs = []
    for run_dir in sorted((results / "runs").iterdir()):
        config = json.loads((run_dir / "config.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
        evals = []
        for path in sorted((run_dir / "evals").glob("*/*.json")):
            row = json.loads(path.read_text())["row"]
            if row["eval_attack"] == "worst":
                continue
            evals.append({"group": path.parent.name, "attack": row["eval_attack"], "n": row["n_eval"],
                          "seconds": round(row["eval_seconds"], 2),
                          **({"components": dict(part.split("=") for part in row["aa_component_seconds"].split(";"))}
                             if row.get("aa_component_seconds") else {})})
        train = config["train"]
        runs.append({"run_id": config["run_id"], "method": train["method"], "train_attack": train["train_attack"],
                     "epochs": [{"epoch": h["epoch"], "train_s": round(h["train_seconds"], 2),
                                 "validation_s": round(h["seconds"] - h["train_seconds"], 2)} for h in history],
                     "evals": evals})
    return runs


def data_seconds(results: Path) -> float:
    """The demo's splits loaded once more, in this process (what each `bench` command pays before training)."""
    from bench.data import load_data

    train = json.loads(next((results / "runs").glob("*/config.json")).read_text())["train"]
    t0 = time.perf_counter()
    load_data(train["dataset"], val_size=train["val_size"], train_subset=train["train_subset"])
    return round(time.perf_counter() - t0, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-time.json"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the store and report here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="demo-time-"))
    results, reports = work / "results", work / "reports"
    commands = demo_commands(results, reports)
    bin_dir = Path(sys.executable).parent
    timed, start = [], time.perf_counter()
    for command in commands:
        argv = shlex.split(command)
        argv[0] = str(bin_dir / argv[0])
        print(f"$ {command}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, cwd=ROOT)
        timed.append({"command": command, "seconds": round(time.perf_counter() - t0, 1)})
    total = round(time.perf_counter() - start, 1)
    doc = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
           "versions": versions(), "total_s": total, "commands": timed, "data_loading_s": data_seconds(results),
           "runs": run_phases(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for t in timed:
        print(f"{t['seconds']:8.1f} s  {t['command']}")
    print(f"{total:8.1f} s  total ({doc['machine']['cpu']}, {doc['machine']['cores']} cores) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
