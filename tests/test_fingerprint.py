"""Which code trained a run (bench/fingerprint.py): the fingerprint follows the training code and nothing else
(checked on a copy of the packages, never the repository), lands in config.json and in every result row, and
`bench status`, `bench report` and `bench run` say when runs were trained by different code."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from support import SEEDS, SMALL, only_run

from bench.cli import main
from bench.fingerprint import code_fingerprint, fingerprint, fingerprint_files, package_dir, recorded_fingerprint
from bench.store import Store, write_json


@pytest.fixture
def code_copy(tmp_path):
    """A copy of the installed bench/ and methods/ packages, and a function giving its fingerprint."""
    roots = {}
    for pkg in ("bench", "methods"):
        roots[pkg] = tmp_path / "copy" / pkg
        shutil.copytree(package_dir(pkg), roots[pkg], ignore=shutil.ignore_patterns("__pycache__"))
    return roots, lambda: fingerprint(fingerprint_files(roots))


def test_a_copy_of_the_code_has_the_installed_fingerprint(code_copy):
    roots, fp = code_copy
    assert fp() == code_fingerprint() and len(fp()) == 12 and int(fp(), 16) >= 0
    files = [rel for rel, _ in fingerprint_files(roots)]
    assert files == sorted(files) and {"bench/models.py", "bench/data.py", "methods/at.py",
                                       "bench/training/loop.py", "bench/attacks/pgd.py"} <= set(files)
    assert not [f for f in files if f.startswith(("bench/report/", "bench/cli/", "bench/evaluation/"))]


@pytest.mark.parametrize("path", ["methods/at.py", "methods/base.py", "bench/training/loop.py",
                                  "bench/attacks/pgd.py", "bench/models.py", "bench/data.py"])
def test_the_fingerprint_changes_with_the_training_code(code_copy, path):
    roots, fp = code_copy
    before = fp()
    pkg, rel = path.split("/", 1)
    file = roots[pkg] / rel
    original = file.read_bytes()
    file.write_bytes(original + b"# one more comment\n")
    assert fp() != before
    file.write_bytes(original)
    assert fp() == before


def test_a_new_method_file_changes_it_and_other_code_does_not(code_copy):
    roots, fp = code_copy
    before = fp()
    for path in ("bench/report/tables.py", "bench/cli/run.py", "bench/evaluation/evaluate.py", "bench/store.py"):
        pkg, rel = path.split("/", 1)
        (roots[pkg] / rel).write_text("# not training code\n")
    (roots["bench"] / "notes.txt").write_text("not python\n")
    assert fp() == before
    (roots["methods"] / "new_method.py").write_text("x = 1\n")
    assert fp() != before


def test_recorded_fingerprint_reads_the_config_or_says_none():
    assert recorded_fingerprint({"provenance": {"code_fingerprint": "abc123abc123"}}) == "abc123abc123"
    assert recorded_fingerprint({"provenance": {}}) is None and recorded_fingerprint({}) is None
    assert recorded_fingerprint(None) is None and recorded_fingerprint({"provenance": {"code_fingerprint": ""}}) is None


def test_a_trained_run_records_it_in_its_config_and_rows(finished):
    store = Store(finished)
    for run_id in store.run_ids():
        assert store.config(run_id)["provenance"]["code_fingerprint"] == code_fingerprint()
    rows = store.load_rows()
    assert rows and {r["code_fingerprint"] for r in rows} == {code_fingerprint()}  # worst rows included
    assert "worst" in {r["eval_attack"] for r in rows}


def set_fingerprint(store: Store, run_id: str, value: str) -> None:
    path = store.run_dir(run_id) / "config.json"
    config = json.loads(path.read_text())
    config["provenance"]["code_fingerprint"] = value
    write_json(path, config)


@pytest.fixture
def mixed_store(tmp_path, add_run, random_flags):
    """AT (PGD) seeds 0 and 1 trained by aaaaaaaaaaaa, GAIRAT (PGD) by bbbbbbbbbbbb (no training: rows written)."""
    store = Store(tmp_path / "store")
    ids = {}
    for method, seed, fp in (("at", 0, "a" * 12), ("at", 1, "a" * 12), ("gairat", 0, "b" * 12)):
        flags = random_flags(np.random.default_rng(seed + len(method)), 40, {"natural": 0.8, "pgd20": 0.5})
        ids[(method, seed)] = add_run(store, method, "pgd", seed, flags)
        set_fingerprint(store, ids[(method, seed)], fp)
    return store, ids


def test_status_says_when_runs_were_trained_by_different_code(mixed_store):
    store, ids = mixed_store
    res = CliRunner().invoke(main, ["status", "--results", str(store.root)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == ("runs trained by 2 different code fingerprints: "
                                           "aaaaaaaaaaaa (2 runs), bbbbbbbbbbbb (1 run)")
    doc = json.loads(CliRunner().invoke(main, ["status", "--results", str(store.root), "--json"]).stdout)
    assert {c["run_id"]: c["code_fingerprint"] for c in doc["cells"]}[ids[("gairat", 0)]] == "b" * 12
    set_fingerprint(store, ids[("gairat", 0)], "a" * 12)
    assert "code fingerprints" not in CliRunner().invoke(main, ["status", "--results", str(store.root)]).output


def test_the_report_names_the_fingerprints_under_the_table(mixed_store, tmp_path):
    from bench.report import write_report
    from bench.report.frame import Selection

    store, ids = mixed_store
    written = write_report(store.root, tmp_path / "out", Selection(compile_pdf=False))
    note = ("Rows trained by 2 different code fingerprints (the training code): aaaaaaaaaaaa for AT (PGD); "
            "bbbbbbbbbbbb for GAIRAT (PGD).")
    assert note in written["table.md"].read_text() and note in written["summary.md"].read_text()
    assert note in written["table.tex"].read_text()
    set_fingerprint(store, ids[("at", 1)], "c" * 12)  # one seed of a row: the row is named under both
    text = write_report(store.root, tmp_path / "out2", Selection(compile_pdf=False))["table.md"].read_text()
    assert ("3 different code fingerprints (the training code): aaaaaaaaaaaa for AT (PGD); bbbbbbbbbbbb for "
            "GAIRAT (PGD); cccccccccccc for AT (PGD).") in text
    for run_id in ids.values():
        set_fingerprint(store, run_id, "a" * 12)
    text = write_report(store.root, tmp_path / "out3", Selection(compile_pdf=False))["table.md"].read_text()
    assert "code fingerprints" not in text


def test_bench_run_warns_when_it_reuses_a_cell_trained_by_other_code(store_copy):
    run_id = only_run(store_copy, seed=1)
    set_fingerprint(store_copy, run_id, "0" * 12)
    res = CliRunner().invoke(main, [*SMALL, *SEEDS, "--results", str(store_copy.root)])
    assert res.exit_code == 0, res.output
    assert "2 already finished" in res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning:" in ln]
    assert len(warnings) == 1 and f"[{run_id}] reused as finished, but trained by code fingerprint 000000000000; " \
        f"this code is {code_fingerprint()}" in warnings[0]
