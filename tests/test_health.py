"""Training health (bench/health.py): each flag fires at its threshold and not beside it, the first epoch and the
first 20% of the run are spared, a healthy history gives {}; then a real run that cannot learn marks its
history.json, a NaN loss lands in the FAILED marker, `bench status` shows both, and `bench report` marks the
run's cells and lists it under Training health."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from support import SMALL

from bench.cli import main
from bench.health import CHANCE_MARGIN, STUCK_LOSS_FRACTION, health_text, run_health, training_health
from bench.store import FAILED, Store

K = 10
CHANCE = 1 / K + CHANCE_MARGIN
STUCK = STUCK_LOSS_FRACTION * math.log(K)  # 2.2335
OK = (0.5, 1.0)  # (val_natural, train_loss) of a healthy epoch


def hist(*epochs: tuple[float, float]) -> list[dict]:
    return [{"epoch": i + 1, "val_natural": v, "train_loss": loss} for i, (v, loss) in enumerate(epochs)]


def stuck_at(epoch: int, epochs: int) -> list[dict]:
    """A run of `epochs` epochs whose loss sits exactly at the threshold in `epoch` only."""
    return hist(*[(0.5, STUCK if e == epoch else 1.0) for e in range(1, epochs + 1)])


# ---- the oracle ---------------------------------------------------------------------------------------------

def test_a_healthy_history_has_no_flag():
    assert training_health(hist(OK, OK, OK), K, 3) == {}
    assert training_health([], K, 10) == {}
    assert training_health(hist((CHANCE + 1e-6, STUCK - 1e-6), (CHANCE + 1e-6, STUCK - 1e-6)), K, 2) == {}


def test_val_at_chance_fires_at_its_threshold_and_not_above():
    assert training_health(hist(OK, (0.12, 1.0)), K, 2) == {
        "val_at_chance": "val accuracy 0.120 at epoch 2 <= chance 0.100 + 0.02"}
    assert set(training_health(hist(OK, (CHANCE, 1.0)), K, 2)) == {"val_at_chance"}
    assert training_health(hist(OK, (0.12 + 1e-6, 1.0)), K, 2) == {}
    assert set(training_health(hist(OK, (0.0, 1.0)), K, 2)) == {"val_at_chance"}


def test_the_first_epoch_at_chance_is_not_flagged_and_later_ones_are_counted():
    assert training_health(hist((0.0, 1.0), OK), K, 2) == {}
    flags = training_health(hist((0.0, 1.0), (0.05, 1.0), OK, (0.1, 1.0), (0.11, 1.0)), K, 5)
    assert flags == {"val_at_chance": "val accuracy 0.050 at epoch 2 <= chance 0.100 + 0.02 (and 2 later epochs)"}
    assert set(training_health(hist(OK, (0.5, 1.0), (0.3, 1.0)), 3, 3)) == {"val_at_chance"}  # 1/3 + 0.02


def test_loss_stuck_fires_at_its_threshold_and_not_below():
    assert training_health(stuck_at(2, 5), K, 5) == {
        "loss_stuck": "train loss 2.234 at epoch 2 of 5 >= 0.97 ln 10 = 2.234"}
    below = hist(OK, (0.5, STUCK - 1e-6))
    assert training_health(below, K, 5) == {}
    assert set(training_health(hist(OK, (0.5, 5.0)), K, 5)) == {"loss_stuck"}


@pytest.mark.parametrize("epochs,last_spared", [(10, 2), (5, 1), (6, 2), (1, 1), (20, 4), (3, 1)])
def test_loss_stuck_spares_the_epochs_that_start_in_the_first_20_percent(epochs, last_spared):
    """Epoch e (1-based) of E counts when e - 1 >= 0.2 E: it starts after the first 20% of the run."""
    assert training_health(stuck_at(last_spared, epochs), K, epochs) == {}
    if last_spared < epochs:
        assert set(training_health(stuck_at(last_spared + 1, epochs), K, epochs)) == {"loss_stuck"}


def test_the_20_percent_mark_is_of_the_configured_run_not_of_the_history():
    three_of_ten = stuck_at(3, 3)  # an interrupted 10-epoch run: epoch 3 starts at 20%
    assert set(training_health(three_of_ten, K, 10)) == {"loss_stuck"}
    assert training_health(three_of_ten, K, 15) == {}  # epoch 3 of 15 starts at 13%


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_is_flagged_and_not_as_stuck(value):
    flags = training_health(hist(OK, (0.5, value)), K, 2)
    assert flags == {"nonfinite_loss": f"train loss {value} at epoch 2"}
    stored = json.loads(json.dumps(hist(OK, (0.5, value))))  # history.json keeps NaN and Infinity
    assert training_health(stored, K, 2) == flags


def test_run_health_takes_the_classes_from_the_catalog_or_the_stored_flags():
    h = hist(OK, (0.05, 1.0))
    assert run_health(h, "synthetic", 2) == training_health(h, 10, 2) != {}
    assert run_health(h, "cifar100", 2) == {}  # chance is 0.03 with 100 classes
    stored = [*h[:-1], {**h[-1], "health": {"val_at_chance": "as the loop saw it"}}]
    assert run_health(stored, "not-installed-plugin", 2) == {"val_at_chance": "as the loop saw it"}
    assert run_health(h, "not-installed-plugin", 2) == {} and run_health([], None, None) == {}
    assert health_text({}) == "" and health_text({"a": "x", "b": "y"}) == "health: a: x; b: y"


# ---- a real run that cannot learn, and one whose loss goes NaN ----------------------------------------------

@pytest.fixture(scope="module")
def sick_store(tmp_path_factory):
    """Seed 0: lr 1e-6, so the model stays at chance for its 3 epochs; seed 1: the real loop with lr 1e30, so
    its loss is NaN in epoch 1 (the runner's train_run patched, as tests/test_runner.py does)."""
    import torch

    import bench.execution.runner as runner_mod

    real = runner_mod.train_run

    def train_run(cfg, *args, **kwargs):
        return real(dataclasses.replace(cfg, lr=1e30) if cfg.seed == 1 else cfg, *args, **kwargs)

    results = tmp_path_factory.mktemp("sick") / "results"
    args = list(SMALL)
    args[args.index("--lr") + 1], args[args.index("--epochs") + 1] = "1e-6", "3"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_mod, "train_run", train_run)
        res = CliRunner().invoke(main, [*args, "--seeds", "0,1", "--results", str(results)])
    torch.set_num_threads(threads)
    assert res.exit_code == 1 and "1 failed" in res.output, res.output
    return results


def by_seed(store: Store) -> dict[int, str]:
    return {store.config(r)["train"]["seed"]: r for r in store.run_ids()}


def test_history_json_records_the_flags_found_so_far(sick_store):
    store = Store(sick_store)
    history = store.history(by_seed(store)[0])
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[0]["health"] == {}
    assert set(history[1]["health"]) == set(history[2]["health"]) == {"val_at_chance", "loss_stuck"}
    assert history[1]["health"]["loss_stuck"].startswith("train loss 2.")
    assert history[2]["health"] == training_health(history, K, 3)  # what status and the report compute


def test_a_nan_loss_is_a_health_flag_in_the_failed_marker(sick_store):
    store = Store(sick_store)
    failed = json.loads((store.run_dir(by_seed(store)[1]) / FAILED).read_text())
    assert failed["reason"].startswith("NonFiniteLoss: loss is nan at epoch 1")
    assert failed["health"]["nonfinite_loss"].startswith("train loss nan at epoch 1, batch ")


def test_status_shows_the_flags(sick_store):
    store = Store(sick_store)
    ids = by_seed(store)
    res = CliRunner().invoke(main, ["status", "--results", str(sick_store)])
    assert res.exit_code == 0, res.output
    lines = {r: next(ln for ln in res.output.splitlines() if r in ln) for r in ids.values()}
    assert lines[ids[0]].startswith("finished") and "health: val_at_chance: val accuracy 0." in lines[ids[0]]
    assert "; loss_stuck: train loss 2." in lines[ids[0]]
    assert lines[ids[1]].startswith("failed") and "health: nonfinite_loss: train loss nan at epoch 1" in lines[ids[1]]
    doc = json.loads(CliRunner().invoke(main, ["status", "--results", str(sick_store), "--json"]).stdout)
    health = {c["run_id"]: c["health"] for c in doc["cells"]}
    assert set(health[ids[0]]) == {"val_at_chance", "loss_stuck"} and set(health[ids[1]]) == {"nonfinite_loss"}


def test_the_report_marks_the_run_and_lists_its_flags(sick_store, tmp_path):
    from bench.report import write_report
    from bench.report.frame import Selection
    from bench.report.tables import HEALTH_NOTE_MD, HEALTH_NOTE_TEX

    store = Store(sick_store)
    run = by_seed(store)[0]
    pdf = shutil.which("pdflatex") is not None
    written = write_report(sick_store, tmp_path / "out", Selection(compile_pdf=pdf))
    text = {name: path.read_text() for name, path in written.items() if path.suffix in (".md", ".tex", ".csv")}
    row = next(ln for ln in text["table.md"].splitlines() if ln.startswith("| AT (PGD)"))
    assert row.count("¶") == 3 and HEALTH_NOTE_MD in text["table.md"]  # natural, PGD-20, worst
    assert r"\P}$" in text["table.tex"] and HEALTH_NOTE_TEX in text["table.tex"]
    assert f"| AT (PGD) | 0 | {run} | val_at_chance | val accuracy 0." in text["health.md"]
    assert f"| AT (PGD) | 0 | {run} | loss_stuck | train loss 2." in text["health.md"]
    assert "### Training health" in text["summary.md"] and f"| {run} | loss_stuck |" in text["summary.md"]
    assert r"\input{health.tex}" in text["report.tex"] and r"\begin{longtable}" in text["health.tex"]
    assert sorted(pd_flags(written["health.csv"])) == [(run, "loss_stuck"), (run, "val_at_chance")]
    assert ("report.pdf" in written) == pdf


def pd_flags(path) -> list[tuple[str, str]]:
    import pandas as pd

    frame = pd.read_csv(path, dtype={"run_id": str})
    return list(zip(frame.run_id, frame.flag))


def test_a_healthy_report_says_no_run_was_flagged(tmp_path, add_run, random_flags):
    from bench.report import write_report
    from bench.report.frame import Selection

    store = Store(tmp_path / "store")
    add_run(store, "at", "pgd", 0, random_flags(np.random.default_rng(0), 40, {"natural": 0.8, "pgd20": 0.5}))
    written = write_report(store.root, tmp_path / "out", Selection(compile_pdf=False))
    assert "¶" not in written["table.md"].read_text()
    none = written["health.md"].read_text()
    assert none.startswith("No run flagged on synthetic, small-cnn")
    assert "(1 run checked: validation accuracy ≤ 1/K + 0.02 after the first epoch" in none
    assert written["health.tex"].read_text().startswith(r"\paragraph{Training health.} No run flagged")
