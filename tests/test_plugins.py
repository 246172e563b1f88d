"""Plugins (bench/plugins.py): a package installed with pip declares a method, a model, a dataset and two attacks
as entry points, and `bench` lists, trains, evaluates and reports them with no edit to the project; the same
module loads with `--plugin` without being installed, reaching spawned workers; taken names are refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import load_frame

FIXTURE = Path(__file__).resolve().parent / "plugin_fixture"
CELL = ["--dataset", "blobs", "--model", "tiny-mlp", "--methods", "focal,at", "--train-attack", "pgd3",
        "--epochs", "2", "--val-size", "100", "--eval-attacks", "natural,pgd5,pgd20", "--checkpoints", "last"]


_GROUP = {"focal": "methods", "tiny-mlp": "models", "blobs": "datasets", "pgd3": "train_attacks",
          "pgd5": "eval_attacks"}


def bench(*args: str, cwd: Path | None = None, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LRAT_BENCH_PLUGINS"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The fixture package installed by pip into a folder of its own (what `pip install` would do in a venv)."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(FIXTURE, root / "src")  # pip builds in place: keep build/ and egg-info out of tests/
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(root / "site"), str(root / "src")], check=True, capture_output=True, timeout=300)
    assert (root / "site" / "focal_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return root / "site"


def test_an_installed_plugin_is_listed_trained_evaluated_and_reported(installed, tmp_path):
    listed = bench("ls", pythonpath=installed)
    assert listed.returncode == 0, listed.stderr
    for name in ("focal", "tiny-mlp", "blobs", "pgd3", "pgd5"):  # each marked with where it came from
        line = next(line for line in listed.stdout.splitlines() if line.split()[:1] == [name])
        assert line.endswith("[plugin focal-plugin (entry point lrat_bench." + _GROUP[name] + ")]"), line
    assert "[plugin" not in next(line for line in listed.stdout.splitlines() if line.split()[:1] == ["at"])
    doc = json.loads(bench("ls", "--json", pythonpath=installed).stdout)
    focal = next(m for m in doc["methods"] if m["name"] == "focal")
    assert focal["source"].startswith("plugin focal-plugin") and focal["parameters"][0]["name"] == "gamma"
    assert next(m for m in doc["methods"] if m["name"] == "at")["source"] == "built-in"

    done = bench("run", *CELL, "--results", str(tmp_path / "r"), pythonpath=installed)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_frame(tmp_path / "r", with_flags=False)
    focal = rows[rows.method == "focal"]
    assert set(focal.eval_attack) >= {"natural", "pgd5", "pgd20"}
    assert set(focal.model) == {"tiny-mlp"} and set(focal.dataset) == {"blobs"} and set(focal.train_attack) == {"pgd3"}
    assert (focal.n_eval == 200).all()
    # the plugin eval attack is an attack: it leaves at most the natural accuracy
    acc = focal.set_index("eval_attack").accuracy
    assert acc["pgd5"] <= acc["natural"]

    report = bench("report", "--results", str(tmp_path / "r"), "--checkpoint", "last", "--out", str(tmp_path / "rep"),
                   pythonpath=installed)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "FOCAL (PGD-3)" in summary and "AT (PGD-3)" in summary and "PGD-5" in summary

    without = bench("run", *CELL, "--results", str(tmp_path / "r2"))  # not installed: an unknown name
    assert without.returncode == 2 and "Unknown dataset 'blobs'" in without.stderr
    assert not (tmp_path / "r2").exists()


def test_a_plugin_module_loads_without_installing_and_reaches_the_workers(tmp_path):
    done = bench("--plugin", "focal_plugin", "run", *CELL, "--workers", "2", "--results", str(tmp_path / "r"),
                 cwd=FIXTURE)
    assert done.returncode == 0, done.stderr[-3000:]
    configs = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").glob("*/config.json")]
    assert sorted(c["train"]["method"] for c in configs) == ["at", "focal"]
    missing = bench("--plugin", "no_such_plugin", "ls", cwd=FIXTURE)
    assert missing.returncode == 2 and "--plugin no_such_plugin: no module of that name" in missing.stderr


@pytest.mark.parametrize("body,message", [
    ("from focal_plugin import FocalAT\nclass At(FocalAT):\n    name = 'at'\nLRAT_BENCH = {'methods': {'at': At}}\n",
     "method 'at' clashes with the built-in one; rename it"),
    ("LRAT_BENCH = {'models': {'resnet18': lambda k, c, s: None}}\n", "model 'resnet18' clashes with the built-in"),
    ("LRAT_BENCH = {'losses': {}}\n", "unknown kind(s) losses"),
    ("X = 1\n", "has no dict named LRAT_BENCH"),
])
def test_a_taken_name_or_a_malformed_module_is_refused(tmp_path, body, message):
    module = tmp_path / "bad_plugin.py"
    module.write_text(body)
    out = bench("--plugin", str(module), "ls", cwd=FIXTURE)
    assert out.returncode == 2 and message in out.stderr, out.stderr
