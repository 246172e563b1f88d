"""`bench status` names each run's stored evaluations (checkpoint, attacks, test points) and always counts
damaged runs; `bench run --dry-run` prints aligned columns and no hours for a cell with nothing left."""
from __future__ import annotations

import json
import re

import numpy as np
from click.testing import CliRunner

from bench.cli import main
from bench.execution.evaluations import evaluations_text, stored_evaluations


def test_stored_evaluations_come_from_the_folder_and_file_names(tmp_path):
    evals = tmp_path / "evals"
    layout = {"best-linf-eps0.1-n1000": ["cw20", "natural", "pgd20", "worst"],
              "last-linf-eps0.1-n1000": ["natural", "pgd20", "cw20", "worst"],
              "best-linf-eps0.1-n50": ["aa", "worst"],
              "epoch12-linf-eps0.1-n50-tf32": ["natural"],
              "best-linf-eps1e-05-n50": []}  # an empty folder: nothing stored there
    for group, attacks in layout.items():
        (evals / group).mkdir(parents=True)
        for attack in attacks:
            (evals / group / f"{attack}.json").write_text("{}")
    (evals / "best-linf-eps0.1-n50" / "aa.aa_state").write_text("{}")  # AutoAttack's resume state: not a row
    (evals / "best-linf-eps0.1-n50" / ".apgd-t.json.1a2b.tmp").write_text("")  # a write in progress
    found = stored_evaluations(tmp_path)
    assert evaluations_text(found) == ("best: natural,pgd20,cw20 @1000; last: natural,pgd20,cw20 @1000; "
                                       "best: aa @50; epoch12: natural @50 tf32")
    assert found[2].to_dict() == {"checkpoint": "best", "threat_model": "linf", "eps": 0.1, "n_eval": 50,
                                  "precision": "fp32", "attacks": ["aa"]}
    (evals / "best-l2-eps0.5-n50").mkdir()
    (evals / "best-l2-eps0.5-n50" / "natural.json").write_text("{}")
    assert "best: natural @50 l2 eps 0.5" in evaluations_text(stored_evaluations(tmp_path))  # settings named
    assert stored_evaluations(tmp_path / "nowhere") == []


def _store(tmp_path, add_run, n_runs: int = 2):
    from bench.store import Store

    store = Store(tmp_path / "results")
    rng = np.random.default_rng(0)
    flags = {"natural": list(rng.random(40) < 0.8), "pgd20": list(rng.random(40) < 0.4),
             "cw20": list(rng.random(40) < 0.3)}
    ids = [add_run(store, "at", "pgd", seed, flags, checkpoints=("best", "last")) for seed in range(n_runs)]
    return store, ids


def test_status_lists_each_runs_evaluations_in_text_and_json(tmp_path, add_run):
    store, ids = _store(tmp_path, add_run)
    res = CliRunner().invoke(main, ["status", "--results", str(store.root)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    shown = "evaluations: best: natural,pgd20,cw20 @40; last: natural,pgd20,cw20 @40"
    assert [i for i, line in enumerate(lines) if line.strip() == shown] == [1, 3]  # under each cell's line
    assert lines[0].startswith("finished") and lines[-1] == "2 cells: 2 finished, 0 running, 0 failed, 0 pending, " \
                                                           "0 damaged"
    doc = json.loads(CliRunner().invoke(main, ["status", "--results", str(store.root), "--json"]).stdout)
    assert [e["checkpoint"] for e in doc["cells"][0]["evaluations"]] == ["best", "last"]
    assert doc["cells"][0]["evaluations"][0] == {"checkpoint": "best", "threat_model": "linf", "eps": 0.0313725,
                                                 "n_eval": 40, "precision": "fp32",
                                                 "attacks": ["natural", "pgd20", "cw20"]}


def test_status_counts_damaged_runs(tmp_path, add_run):
    store, ids = _store(tmp_path, add_run)
    (store.run_dir(ids[1]) / "config.json").write_text('{"run_id": ')  # truncated
    res = CliRunner().invoke(main, ["status", "--results", str(store.root)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == "2 cells: 1 finished, 0 running, 0 failed, 0 pending, 1 damaged"
    doc = json.loads(CliRunner().invoke(main, ["status", "--results", str(store.root), "--json"]).stdout)
    assert doc["totals"]["damaged"] == 1


HOURS = re.compile(r"\d h(  |$)")  # an hours cell: "  2.5 h"


def test_plan_lines_align_and_leave_hours_out_where_nothing_is_left():
    from bench.cli.run import _plan_lines
    from bench.execution.status import CellStatus

    rows = [CellStatus("a" * 12, "finished", "at/pgd synthetic/small-cnn seed 0 [aaaaaaaaaaaa]"),
            CellStatus("b" * 12, "pending", "lrat/saa+cw synthetic/small-cnn seed 10 [bbbbbbbbbbbb]", "not started"),
            CellStatus("c" * 12, "running", "gairat/pgd synthetic/small-cnn seed 1 [cccccccccccc]", "lock held")]
    plan = [{"work_steps": 0, "hours": 0.0}, {"work_steps": 1_234_567, "hours": 2.5}, {"work_steps": 0, "hours": 0.0}]
    lines = _plan_lines(rows, plan, timed=True)
    assert len({line.index("steps") for line in lines}) == 1  # the step column lines up whatever the label
    assert lines[1].split("steps")[1].split() == ["2.5", "h", "not", "started"]
    assert not HOURS.search(lines[0]) and lines[0].endswith("0 steps")  # finished: no hours, no trailing blanks
    assert not HOURS.search(lines[2]) and lines[2].endswith("lock held")
    assert lines[2].index("lock held") == lines[1].index("not started")  # the detail column lines up too
    assert not any(HOURS.search(line) for line in _plan_lines(rows, plan, timed=False))


def test_dry_run_text_aligns_and_gives_no_hours_to_a_running_cell(tmp_path):
    from filelock import FileLock

    from bench.store import Store

    matrix = tmp_path / "m.toml"
    matrix.write_text('[matrix]\nmethods = ["at", "gairat"]\ndatasets = ["synthetic"]\nseeds = [0, 10]\n'
                      '[train]\nepochs = 2\ntrain_subset = 64\nval_size = 32\nattack_steps = 2\n')
    results = tmp_path / "results"
    args = ["run", "--dry-run", "--config", str(matrix), "--results", str(results), "--grad-steps-per-s", "1000"]
    doc = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    store = Store(results)
    store.lock_path(doc["cells"][0]["run_id"]).parent.mkdir(parents=True)
    with FileLock(store.lock_path(doc["cells"][0]["run_id"])):  # another process trains it
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    cells = res.output.splitlines()[:4]
    assert cells[0].startswith("running") and not HOURS.search(cells[0])
    assert all(line.startswith("pending") and HOURS.search(line) for line in cells[1:])
    assert len({line.index(" steps") for line in cells}) == 1
    assert "0.00 h" not in res.output and "Give --speed-json" not in res.output
