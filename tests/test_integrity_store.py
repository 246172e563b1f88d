"""One integrity check (bench/store_integrity.py) behind `bench status`, `bench report` and `bench export`, tried as
a hostile user would: each probe of issue 24 (a swapped best.pt, a truncated one, an edited accuracy, a deleted
eval file, a deleted eval group) is named by status, refused by the report (exit 1) and bench.api.results by name
with what truly repairs it, left out and said so with --skip-damaged, refused by export, and repaired by what the
message names.
Also: a read-only store, comparisons only of like with like (Worst, export's point sets), and the lesser
failures (a plugin that raises on import, report temporary files, attempts.json after a repair, the advice of
`bench eval`, eps titles, the TOML hint, external-only captions)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support import SEEDS, SMALL, TinyNet, bench, invoke, only_run, tree

import bench.api as api
from bench.execution.status import ATTEMPTS, cell_status
from bench.store import DONE, FAILED, Store
from bench.store_integrity import RUN_REPAIRS, RunsRefused, run_integrity

# ---- the probes -----------------------------------------------------------------------------------------------

def _swap(store: Store, run_dir: Path) -> str:
    shutil.copyfile(store.run_dir(only_run(store, 0)) / "best.pt", run_dir / "best.pt")  # another model's
    return "evals/best-"


def _truncate(store: Store, run_dir: Path) -> str:
    data = (run_dir / "best.pt").read_bytes()
    (run_dir / "best.pt").write_bytes(data[:len(data) // 2])
    return "best.pt"


def _edit_accuracy(store: Store, run_dir: Path) -> str:
    (path,) = run_dir.glob("evals/best-*/natural.json")
    record = json.loads(path.read_text())
    record["row"]["accuracy"] = 0.99  # its flags say otherwise
    path.write_text(json.dumps(record))
    return path.relative_to(run_dir).as_posix()


def _delete_pgd20(store: Store, run_dir: Path) -> str:
    (path,) = run_dir.glob("evals/best-*/pgd20.json")
    path.unlink()
    return path.relative_to(run_dir).as_posix()


def _delete_group(store: Store, run_dir: Path) -> str:
    (group,) = run_dir.glob("evals/epoch1-*")
    shutil.rmtree(group)
    return f"evals/{group.name}/"


PROBES = {"swapped best.pt": ("stale", _swap), "truncated best.pt": ("damaged", _truncate),
          "edited accuracy": ("damaged", _edit_accuracy), "deleted pgd20": ("damaged", _delete_pgd20),
          "deleted eval group": ("damaged", _delete_group)}


def report(root: Path, out: Path, *extra: str):
    return invoke("report", "--results", str(root), "--out", str(out), "--no-pdf", *extra)


@pytest.mark.parametrize("probe", list(PROBES))
def test_each_probe_is_named_by_status_refused_by_report_and_export_and_repaired_by_run(store_copy, tmp_path, probe):
    store = store_copy
    bad = only_run(store, seed=1)
    run_dir = store.run_dir(bad)
    verdict, make = PROBES[probe]
    where = make(store, run_dir)

    state = cell_status(store, bad)
    assert state.state == verdict and state.detail.startswith(where) and RUN_REPAIRS in state.detail, state
    shown = invoke("status", "--results", str(store.root)).output
    assert f"1 finished, 0 running, 0 failed, 0 pending, 1 {verdict}" in shown, shown

    refused = report(store.root, tmp_path / "rep")
    assert refused.exit_code == 1 and f"[{bad}]: {verdict}: " in refused.output, refused.output
    assert "Traceback" not in refused.output and RUN_REPAIRS in refused.output and where in refused.output
    assert not (tmp_path / "rep" / "table.md").exists()

    skipped = report(store.root, tmp_path / "skip", "--skip-damaged")
    assert skipped.exit_code == 0, skipped.output
    summary, tex = (tmp_path / "skip" / "summary.md").read_text(), (tmp_path / "skip" / "report.tex").read_text()
    assert "Left out by `--skip-damaged`" in summary and f"[{bad}]: {verdict}: " in summary
    assert bad in tex and "Left out by" in tex
    assert set(pd.read_csv(tmp_path / "skip" / "table.csv").n_seeds) == {1}  # the healthy seed alone
    assert bad not in (tmp_path / "skip" / "results.csv").read_text()

    exported = invoke("export", bad, "--results", str(store.root), "--out", str(tmp_path / "export"))
    assert exported.exit_code == 1 and f"refuses run {bad}" in exported.output, exported.output
    assert not (tmp_path / "export" / "model.pt").exists()

    with pytest.raises(RunsRefused, match=rf"\[{bad}\]: {verdict}: ") as refused_rows:  # bench.api, the same verdict
        api.results(store.root)
    assert "skip_damaged=True" in str(refused_rows.value)
    kept = api.results(store.root, skip_damaged=True)
    assert set(kept.run_id) == {only_run(store, 0)} and len(kept) > 0

    repaired = invoke(*SMALL, *SEEDS, "--results", str(store.root))  # what the message promised
    assert repaired.exit_code == 0, repaired.output
    assert cell_status(store, bad).state == "finished" and run_integrity(store, bad).usable
    assert report(store.root, tmp_path / "after").exit_code == 0


def test_rows_bench_eval_added_get_the_bench_eval_command_not_bench_run(store_copy, tmp_path):
    """`bench run` repairs its own suite only: a deleted group that `bench eval` added is named with the exact
    `bench eval` command, which repairs it; DONE records the files `bench eval` added."""
    store = store_copy
    run_id = only_run(store, 0)
    res = invoke("eval", run_id, "--results", str(store.root), "--eval-attacks", "natural,fgsm", "--checkpoint",
                 "best", "--test-subset", "16", "--device", "cpu")
    assert res.exit_code == 0, res.output
    (group,) = store.run_dir(run_id).glob("evals/best-*-n16")
    assert [group.name, "fgsm"] in json.loads((store.run_dir(run_id) / DONE).read_text())["evals"]
    shutil.rmtree(group)

    verdict = run_integrity(store, run_id)
    assert verdict.verdict == "damaged" and "`bench run`" not in verdict.repair, verdict
    (command,) = re.findall(r"`bench eval ([^`]*)`", verdict.repair)
    refused = report(store.root, tmp_path / "rep")
    assert refused.exit_code == 1 and command in refused.output and RUN_REPAIRS not in refused.output
    assert invoke("eval", *command.split(), "--device", "cpu").exit_code == 0
    assert run_integrity(store, run_id).usable and cell_status(store, run_id).state == "finished"


# ---- bench export ----------------------------------------------------------------------------------------------

def test_export_refuses_unfinished_failed_and_in_store_exports_writing_nothing(store_copy, tmp_path):
    store = store_copy
    run_id = only_run(store, 0)
    store.clear(run_id, DONE)
    res = invoke("export", run_id, "--results", str(store.root), "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "has not finished (no DONE marker)" in res.output, res.output
    store.mark(run_id, DONE)
    store.mark(run_id, FAILED, {"reason": "boom"})
    res = invoke("export", run_id, "--results", str(store.root), "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "failed (FAILED marker" in res.output, res.output
    assert not (tmp_path / "a").exists()
    store.clear(run_id, FAILED)
    before = tree(store.root)
    for inside in (store.root, store.root / "exported", store.run_dir(run_id), tmp_path / "link" / "x"):
        (tmp_path / "link").unlink(missing_ok=True)
        (tmp_path / "link").symlink_to(store.root)  # a path that leads into the store through a link
        res = invoke("export", run_id, "--results", str(store.root), "--out", str(inside))
        assert res.exit_code == 2 and "lies inside the results store" in res.output, res.output
    assert tree(store.root) == before  # nothing written, not even a write probe


def test_export_takes_each_accuracy_from_the_largest_point_set_and_says_which(store_copy, tmp_path):
    """natural on 32 points, AutoAttack on 16 (as the demo's 1,000 and 50): the clean accuracy is the 32-point
    one, provenance names each accuracy's points, and "unreliable" is true (and says why)."""
    store = store_copy
    run_id = only_run(store, 0)
    for attacks, n in (("natural", "32"), ("natural,aa", "16")):
        res = invoke("eval", run_id, "--results", str(store.root), "--eval-attacks", attacks, "--eps", "0.3",
                     "--checkpoint", "best", "--test-subset", n, "--device", "cpu")
        assert res.exit_code == 0, res.output
    res = invoke("export", run_id, "--results", str(store.root), "--out", str(tmp_path / "x"), "--eps", "0.3")
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "x" / "provenance.json").read_text())
    (info_path,) = (tmp_path / "x" / "model_info").rglob("*.json")
    info = json.loads(info_path.read_text())
    big = next(r for r in store.iter_evals(run_id) if r["eval_attack"] == "natural" and r["eval_eps"] == 0.3
               and r["n_eval"] == 32)
    assert prov["accuracy_n_eval"]["natural"] == 32 and prov["accuracy_n_eval"]["aa"] == 16
    assert prov["accuracy"]["natural"] == big["accuracy"] and info["clean_acc"] == f"{big['accuracy'] * 100:.2f}"
    assert info["unreliable"] is True and any("different point sets" in r for r in prov["unreliable_reasons"])
    assert "clean accuracy on 32 test points" in info["footnote"]


# ---- a read-only store -----------------------------------------------------------------------------------------

def _state(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def test_status_writes_nothing_and_works_where_every_write_fails(store_copy, monkeypatch):
    """As on a read-only mount (EROFS for every write under the store, which root's chmod cannot give): status
    works, creates and truncates no lock file, and still sees a held lock."""
    from filelock import FileLock

    store = store_copy
    assert list((store.root / "locks").glob("*.lock"))  # the runs left their lock files
    real_open = os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def read_only_open(path, flags, *args, **kwargs):
        if flags & writes and Path(path).resolve().is_relative_to(store.root.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    held = FileLock(store.lock_path(only_run(store, 1)))
    held.acquire()  # before the store turns read-only: another process's running cell
    try:
        before = _state(store.root)
        monkeypatch.setattr(os, "open", read_only_open)
        res = invoke("status", "--results", str(store.root))
        monkeypatch.undo()
        after = _state(store.root)
    finally:
        monkeypatch.undo()
        held.release()
    assert res.exit_code == 0 and "2 cells: 1 finished, 1 running" in res.output, res.output
    assert after == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_status_and_report_work_on_a_chmod_read_only_store(store_copy, tmp_path):
    root = store_copy.root
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        status = invoke("status", "--results", str(root))
        assert status.exit_code == 0 and "2 finished" in status.output, status.output
        assert report(root, tmp_path / "rep").exit_code == 0
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


# ---- like with like --------------------------------------------------------------------------------------------

def test_a_worst_over_other_attacks_is_no_number_and_says_so(store_copy, tmp_path):
    """An external model evaluated on natural only beside AT on natural and PGD-20: its Worst and its Worst gap
    are "--" with the two attack sets named, AT's Worst stays a number."""
    import bench.api as api

    torch.manual_seed(0)
    api.evaluate(TinyNet(), name="tinynet", dataset="synthetic", eval_attacks="natural", eps=0.02, test_subset=32,
                 results=store_copy.root, device="cpu")
    out = tmp_path / "rep"
    assert report(store_copy.root, out).exit_code == 0
    cells = pd.read_csv(out / "table.csv")
    assert set(cells[cells.eval_attack == "worst"].variant) == {"AT (PGD)"}
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| tinynet (external)"))
    assert row.rstrip(" |").endswith("--"), row
    assert "Worst over different attack sets: -- for tinynet (external), whose Worst combines Natural" in table
    gaps = pd.read_csv(out / "attack_gaps.csv")
    worst = gaps[(gaps.eval_attack == "worst") & (gaps.variant == "tinynet (external)")].iloc[0]
    assert np.isnan(worst.gap) and np.isnan(worst.seed_p) and "different attack sets" in worst.note
    assert "combine different attacks" in (out / "attack_gaps.md").read_text()


# ---- the lesser failures ---------------------------------------------------------------------------------------

def test_a_plugin_that_raises_on_import_exits_2_naming_it(tmp_path):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("import math\n\nraise ValueError('no config for this plugin')\n")
    proc = bench("--plugin", str(plugin), "ls")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert f"--plugin {plugin}: importing it raised ValueError: no config for this plugin" in err
    assert "line 3" in err and "Traceback" not in err


def test_report_temp_files_of_a_killed_report_are_removed_by_the_next(store_copy, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    leftovers = [out / ".table.tex.0a1b2c3d.tmp", out / ".fig_gap.png.deadbeef.tmp"]
    keep = [out / "notes.tmp", out / ".table.tex.tmp", out / "mine.txt"]  # not the atomic writer's names
    for p in leftovers + keep:
        p.write_text("x")
    assert report(store_copy.root, out).exit_code == 0
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)


def test_attempts_record_no_retrain_after_a_history_repair(store_copy):
    store = store_copy
    run_id = only_run(store, 0)
    path = store.run_dir(run_id) / "history.json"
    path.write_text(path.read_text()[:20])
    assert invoke(*SMALL, *SEEDS, "--results", str(store.root)).exit_code == 0
    attempts = json.loads((store.run_dir(run_id) / ATTEMPTS).read_text())
    assert [(a["phase"], a["from_epoch"]) for a in attempts][-1] == ("evaluate", 2)  # rebuilt, not retrained
    assert [a["phase"] for a in attempts].count("train") == 1


def test_bench_eval_does_not_promise_that_bench_run_repairs_a_refused_file(store_copy, tmp_path):
    store = store_copy
    run_id = only_run(store, 0)
    torch.save({"w": torch.zeros(1), "x": Path("planted")}, store.run_dir(run_id) / "last.pt")  # not a tensor
    res = invoke("eval", run_id, "--results", str(store.root), "--eval-attacks", "natural", "--checkpoint", "last",
                 "--device", "cpu")
    assert res.exit_code == 1 and "refused" in res.output, res.output
    assert "`bench run` repairs it" not in res.output and "delete it" in res.output


def test_settings_at_nearby_budgets_get_distinct_titles(tmp_path, add_run, random_flags):
    store = Store(tmp_path / "r")
    for eps in (0.1, 0.10001):
        flags = random_flags(np.random.default_rng(0), 40, {"natural": 0.8, "pgd20": 0.4})
        add_run(store, "at", "pgd", 0, flags, eps=eps)
    assert report(store.root, tmp_path / "rep").exit_code == 0
    summary = (tmp_path / "rep" / "summary.md").read_text()
    titles = [line for line in summary.splitlines() if line.startswith("## synthetic")]
    assert len(titles) == len(set(titles)) == 2 and any("ε = 0.10001," in t for t in titles), titles


def test_a_top_level_toml_key_names_its_section(tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text('methods = ["at"]\n')
    res = invoke("run", "--config", str(matrix), "--dry-run")
    assert res.exit_code == 2 and "It belongs in [matrix]" in res.output, res.output
    assert "Did you mean: methods?" not in res.output


def test_an_external_only_report_says_external_model(tmp_path):
    import bench.api as api

    torch.manual_seed(0)
    api.evaluate(TinyNet(), name="tinynet", dataset="synthetic", eval_attacks="natural,pgd20", eps=0.02,
                 test_subset=32, results=tmp_path / "r", device="cpu")
    (run_id,) = Store(tmp_path / "r").run_ids()
    assert run_integrity(Store(tmp_path / "r"), run_id).usable  # no TRAINED: an external model has none
    assert report(tmp_path / "r", tmp_path / "rep").exit_code == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "32 test points, external model" in table and "best checkpoint" not in table
