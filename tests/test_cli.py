"""CLI surface: every command has --help with an example; listing; refusal of bad input with exit code 2."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.cli import main


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "bench " + command in result.output


def test_ls_lists_every_registry_entry():
    from bench.data import DATASETS
    from bench.evaluation.attacks import EVAL_ATTACKS
    from bench.models import MODELS
    from bench.attacks.training import TRAIN_ATTACKS
    from methods import METHODS

    out = CliRunner().invoke(main, ["ls"]).output
    for name in [*METHODS, *TRAIN_ATTACKS, *EVAL_ATTACKS, *DATASETS, *MODELS]:
        assert f"  {name} " in out


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    import bench

    result = CliRunner().invoke(main, ["--version"], prog_name="bench")
    assert result.exit_code == 0, result.output
    assert result.output == f"bench, version {version('lrat-bench')}\n"
    assert bench.__version__ == version("lrat-bench")  # what every result row records as bench_version


@pytest.mark.parametrize("args,message", [
    (["--eps", "8"], "Did you mean 8/255?"),
    (["--methods", "irta"], "Did you mean: irat?"),
    (["--train-attack", "pdg"], "Did you mean: pgd?"),
    (["--methods", "at", "--train-attack", "saa+cw"], "takes one training attack"),
    (["--methods", "gairat", "--train-attack", "fgsm"], "kappa"),
    (["--method-param", "gairat.lamb=0", "--methods", "gairat"], "Did you mean: lam?"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, args, message):
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", "--dataset", "synthetic", "--results", str(results), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not results.exists()


def test_learning_rate_defaults_and_linear_scaling():
    from bench.config.matrix_cells import learning_rate

    assert learning_rate(None, "small-cnn", 128) == 0.05 and learning_rate(None, "resnet18", 128) == 0.1
    assert learning_rate(0.1, "resnet18", 512, "linear") == pytest.approx(0.4)
    assert learning_rate(0.2, "small-cnn", 64, "none") == 0.2


def test_gpu_path_flags_reach_the_run(tmp_path):
    """bf16 is part of the run identity; channels_last is a runtime option, recorded in the history only."""
    import json

    results = tmp_path / "r"
    args = ["run", "--dataset", "synthetic", "--train-subset", "64", "--val-size", "32", "--test-subset", "16",
            "--epochs", "1", "--attack-steps", "2", "--eval-attacks", "natural", "--results", str(results),
            "--precision", "bf16", "--channels-last", "--lr-scale", "linear", "--batch-size", "32", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = (results / "runs").iterdir()
    train = json.loads((run_dir / "config.json").read_text())["train"]
    assert train["precision"] == "bf16" and train["lr"] == pytest.approx(0.05 * 32 / 128)
    assert json.loads((run_dir / "history.json").read_text())[0]["channels_last"] is True


# ---- --json, bench ls METHOD, shell completion ---------------------------------------------------------------

def stdout_json(*args: str):
    """Run `bench *args`; its stdout must be exactly one JSON document (logs and progress go to stderr)."""
    import json

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result


def test_ls_json_is_the_registries_and_the_catalog():
    from bench.attacks.training import TRAIN_ATTACKS
    from bench.config.catalog import MODELS as MODEL_ENTRIES
    from bench.data import DATASETS
    from bench.evaluation.attacks import EVAL_ATTACKS
    from bench.models import MODELS
    from methods import METHODS

    from bench.config import catalog

    doc, _ = stdout_json("ls", "--json")
    assert list(doc) == ["methods", "train_attacks", "eval_attacks", "datasets", "models"]
    # the catalog's display order (the report's), the registries' entries
    assert [m["name"] for m in doc["methods"]] == list(catalog.METHODS)
    assert set(catalog.METHODS) == {k for k, v in METHODS.items() if k == v.name}
    for m in doc["methods"]:
        cls, entry = METHODS[m["name"]], METHODS[m["name"]].entry()
        assert (m["label"], m["summary"], m["max_attacks"]) == (entry.label, cls.summary, entry.max_attacks)
        assert m["aliases"] == [k for k, v in METHODS.items() if v is cls and k != cls.name]
        assert [p["name"] for p in m["parameters"]] == list(entry.params)
        for p in m["parameters"]:
            spec = entry.params[p["name"]]
            assert (p["default"], p["source"], p["choices"]) == (spec.default, spec.source, list(spec.choices))
            assert (p["low"], p["high"], p["allow_inf"]) == (spec.low, spec.high, spec.allow_inf)
        assert set(m["train_attacks"]) <= set(TRAIN_ATTACKS) and m["train_attacks"]
        if entry.train_attacks:  # a method with its own attack (TRADES: kl) takes that one only
            assert m["train_attacks"] == [a for a in TRAIN_ATTACKS if a in entry.train_attacks]
        if entry.needs_kappa:  # GAIRAT: only attacks that report kappa
            assert m["train_attacks"] == [a for a, v in TRAIN_ATTACKS.items() if v.has_kappa]
    assert "irat" in next(m for m in doc["methods"] if m["name"] == "gairat")["aliases"]
    lrat = next(m for m in doc["methods"] if m["name"] == "lrat")
    assert lrat["max_attacks"] > 1 and lrat["train_attacks"] == list(TRAIN_ATTACKS)
    assert [(a["name"], a["has_kappa"]) for a in doc["train_attacks"]] == \
        [(k, v.has_kappa) for k, v in TRAIN_ATTACKS.items()]
    assert [(a["name"], a["label"], a["strength"]) for a in doc["eval_attacks"]] == \
        [(k, EVAL_ATTACKS[k].entry.label, EVAL_ATTACKS[k].strength) for k in catalog.EVAL_ATTACKS]
    assert [(d["name"], d["n_test"], d["eps_linf"], d["default_model"]) for d in doc["datasets"]] == \
        [(k, v.n_test, v.eps_linf, v.default_model) for k, v in DATASETS.items()]
    assert [(m["name"], m["lr"]) for m in doc["models"]] == [(k, MODEL_ENTRIES[k].lr) for k in MODELS]


@pytest.mark.parametrize("name", ["lrat", "irat", "at", "mail", "lsat"])
def test_ls_method_prints_every_parameter_with_its_default_valid_values_and_source(name):
    from methods import METHODS

    cls = METHODS[name]
    result = CliRunner().invoke(main, ["ls", name.upper()])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (f"{name}: alias of {cls.name}" if name != cls.name else f"{name} ({cls.entry().label}): "
                        f"{cls.summary}")
    if not cls.entry().params:
        assert "parameters: none" in lines
    for key, spec in cls.entry().params.items():
        (line,) = [li for li in lines if li.startswith(f"  {key} ")]
        assert line.endswith(spec.source)
        default = f"{spec.default:.6g}" if isinstance(spec.default, float) else str(spec.default)
        assert line.split()[1] == default
        if spec.choices:
            assert "one of " + ", ".join(spec.choices) in line
        elif spec.low is not None and spec.high is not None:
            assert f"[{spec.low:g}, {spec.high:g}]" in line
        elif spec.low is not None:
            assert f">= {spec.low:g}" in line
        assert ("+-inf" in line) == spec.allow_inf
    json_entry, _ = stdout_json("ls", name, "--json")
    assert json_entry["name"] == cls.name and [p["name"] for p in json_entry["parameters"]] == list(cls.entry().params)


@pytest.fixture
def mixed_store(tmp_path, add_run, random_flags):
    """A finished AT run, an interrupted GAIRAT run (3 epochs stored, no DONE) and a failed MAIL run."""
    import numpy as np

    from bench.store import FAILED, Store

    store = Store(tmp_path / "results")
    flags = random_flags(np.random.default_rng(0), 20, {"natural": 0.8})
    ids = {"finished": add_run(store, "at", "pgd", 0, flags),
           "pending": add_run(store, "gairat", "pgd", 1, flags, done=False),
           "failed": add_run(store, "mail", "pgd", 2, flags, done=False)}
    store.mark(ids["failed"], FAILED, {"reason": "boom"})
    return store, ids


def test_status_json_is_the_cells_and_the_totals_of_the_text(mixed_store):
    store, ids = mixed_store
    doc, _ = stdout_json("status", "--results", str(store.root), "--json")
    assert (doc["results"], doc["results_exists"]) == (str(store.root), True)
    by_id = {c["run_id"]: c for c in doc["cells"]}
    assert set(by_id) == set(store.run_ids())
    for state, run_id in ids.items():
        cell, train = by_id[run_id], store.config(run_id)["train"]
        assert cell["state"] == state
        assert {k: cell[k] for k in ("method", "train_attack", "dataset", "model", "seed", "epochs")} == \
            {k: train[k] for k in ("method", "train_attack", "dataset", "model", "seed", "epochs")}
        assert cell["epochs_done"] == len(store.history(run_id)) and cell["label"].endswith(f"[{run_id}]")
    assert by_id[ids["failed"]]["detail"] == "boom"
    assert doc["totals"] == {"cells": 3, "finished": 1, "running": 0, "failed": 1, "pending": 1, "stale": 0,
                             "damaged": 0}
    text = CliRunner().invoke(main, ["status", "--results", str(store.root)]).output
    assert "3 cells: 1 finished, 0 running, 1 failed, 1 pending" in text
    only, _ = stdout_json("status", "--results", str(store.root), "--json", "--state", "failed")
    assert [c["run_id"] for c in only["cells"]] == [ids["failed"]] and only["totals"] == doc["totals"]


def test_dry_run_json_is_the_plan_the_text_prints(tmp_path):
    from bench.config.catalog import DATASETS
    from bench.store import Store, write_json

    matrix = tmp_path / "m.toml"
    matrix.write_text('[matrix]\nmethods = ["at", "lrat"]\ndatasets = ["synthetic"]\nseeds = [0, 1]\n'
                      '[train]\nepochs = 3\ntrain_subset = 128\nval_size = 64\nattack_steps = 2\n')
    results = tmp_path / "results"
    args = ["run", "--dry-run", "--config", str(matrix), "--results", str(results), "--grad-steps-per-s", "1000"]
    doc, _ = stdout_json(*args, "--json")
    n_train = min(128, DATASETS["synthetic"].n_train - 64)
    assert [(c["method"], c["seed"], c["state"]) for c in doc["cells"]] == \
        [("at", 0, "pending"), ("at", 1, "pending"), ("lrat", 0, "pending"), ("lrat", 1, "pending")]
    assert all(c["work_steps"] == 3 * n_train * (2 + 1) for c in doc["cells"])
    # One cell trained 2 of its 3 epochs (as a killed run leaves it): 1 epoch of work left.
    first = doc["cells"][0]["run_id"]
    write_json(Store(results).run_dir(first) / "history.json", [{"epoch": 1}, {"epoch": 2}])
    doc, _ = stdout_json(*args, "--json")
    cell = doc["cells"][0]
    assert (cell["run_id"], cell["epochs_done"], cell["work_steps"]) == (first, 2, 1 * n_train * 3)
    assert doc["totals"]["work_steps"] == sum(c["work_steps"] for c in doc["cells"]) == 10 * n_train * 3
    assert doc["totals"]["hours"] == pytest.approx(doc["totals"]["work_steps"] / 1000 / 3600)
    assert doc["estimate"] == {"basis": "grad-steps-per-s", "hours": doc["totals"]["hours"], "grad_steps_per_s": 1000}
    assert {k: doc["totals"][k] for k in ("cells", "pending", "finished")} == {"cells": 4, "pending": 4, "finished": 0}
    text = CliRunner().invoke(main, args).output
    assert f"Work left: {doc['totals']['work_steps']:,} example-gradient steps" in text
    assert f"{cell['work_steps']:>14,} steps" in text.splitlines()[0]
    no_speed, _ = stdout_json(*args[:-2], "--json")
    assert no_speed["estimate"] is None and no_speed["totals"]["hours"] is None
    assert all(c["hours"] is None for c in no_speed["cells"]) and not results.joinpath("locks").exists()


def test_the_documented_completion_line_completes_commands_and_method_names():
    """The README's `eval "$(_BENCH_COMPLETE=bash_source bench)"`, run by bash with the installed `bench`."""
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = re.search(r'`(eval "\$\(_BENCH_COMPLETE=bash_source bench\)")`', readme)
    assert line, "README.md documents no bash completion line"
    script = Path(sys.executable).parent / "bench"
    if not script.exists() or shutil.which("bash") is None:
        pytest.skip("no installed bench console script or no bash")
    env = {**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    probe = (f"{line.group(1)} && complete -p bench && for w in 'bench sta' 'bench ls ir' 'bench run --dry'; do "
             "read -ra COMP_WORDS <<< \"$w\"; COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); "
             "_bench_completion bench; echo \"${COMPREPLY[*]}\"; done")
    proc = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["complete -o nosort -F _bench_completion bench", "status", "irat", "--dry-run"]
