"""Matrix files: parsed into `bench run`'s parameters, refused with file:line and a suggestion when malformed,
overridden by the flags the user typed (even a flag equal to its default), expanded over datasets x models x
methods x attacks x seeds; and the work estimate of --dry-run, checked against hand-computed numbers."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.cli.run import run as run_command
from bench.config.matrix_merge import defaults_of, merge
from bench.config.matrix_estimate import grad_steps, hours
from bench.config.matrix_file import load_matrix_file
from bench.config.matrix_cells import resolve
from bench.config.names import UsageError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


def work_of(line: str) -> int:
    return int(re.search(r"([\d,]+) steps", line).group(1).replace(",", ""))


def cells_of(file_values: dict, **flags):
    return resolve(merge(defaults_of(run_command), file_values, flags))


def test_a_matrix_file_sets_every_kind_of_key(tmp_path):
    path = write(tmp_path, """
[matrix]
methods = ["at", "irat"]
train_attacks = ["pgd", "cw"]
datasets = ["synthetic"]
models = ["small-cnn"]
seeds = [3, 4]
[train]
epochs = 3
eps = "8/255"
lr = 0.05
train_subset = 64
[eval]
attacks = ["natural", "pgd20"]
test_subset = 32
[method_params.gairat]
lam = 0
""")
    values = load_matrix_file(path)
    assert values == {"methods": ["at", "irat"], "train_attack": ["pgd", "cw"], "dataset": ["synthetic"],
                      "model": ["small-cnn"], "seeds": [3, 4], "epochs": 3, "eps": "8/255", "lr": 0.05,
                      "train_subset": 64, "eval_attacks": ["natural", "pgd20"], "test_subset": 32,
                      "method_params": {"gairat": {"lam": 0}}}
    cells = cells_of(values)
    assert len(cells) == 2 * 2 * 2
    assert [(c.train.method, c.train.train_attack, c.train.seed) for c in cells[:3]] == [
        ("at", "pgd", 3), ("at", "pgd", 4), ("at", "cw", 3)]
    gairat = cells[-1].train
    assert gairat.method == "gairat" and gairat.method_params["lam"] == 0.0
    assert gairat.method_params["burn_in"] == 59 / 120  # the default: GAIRAT.py's 59 plain-AT epochs of 120
    assert gairat.eps == pytest.approx(8 / 255) and gairat.attack_step_size == pytest.approx(2 / 255)
    assert gairat.epochs == 3 and gairat.lr == 0.05 and gairat.val_size == 512  # 512: the flag's default
    assert cells[0].eval.attacks == ("natural", "pgd20") and cells[0].eval.test_subset == 32


@pytest.mark.parametrize("text,message", [
    ("[train]\nepochs = 3\nepoch = 4\n", "m.toml:3: unknown key 'epoch' in [train]. Did you mean: epochs?"),
    ("[matrix]\nmethods = ['at']\n\n[trian]\nepochs = 1\n", "m.toml:4: unknown section [trian]. Did you mean: train?"),
    ("[train]\nlr = 0.1\nepochs = \"ten\"\n", "m.toml:3: key 'train.epochs' must be an integer, got 'ten'"),
    ("[matrix]\nseeds = [0, \"1\"]\n", "m.toml:2: key 'matrix.seeds' must be a list of integers"),
    ("[eval]\nthreat_model = \"l3\"\n", "m.toml:2: key 'eval.threat_model' must be \"linf\" or \"l2\""),
    ("methods = [\"at\"]\n", "m.toml:1: key 'methods' must sit inside a section"),
    ("[matrix]\nmethods = [\"at\"\n", "m.toml:2: malformed TOML in the value of 'methods'"),
    ("[train]\nepochs = = 3\n", "m.toml:2: malformed TOML in the value of 'epochs'"),
    ("[method_params.gairat]\nlamb = 0\n", "m.toml:1: [method_params.gairat]: Unknown parameter 'lamb' for method "
                                           "'gairat'. Did you mean: lam?"),
    ("[matrix]\nseeds = [0]\n[method_params.giarat]\nlam = 0\n", "m.toml:3: [method_params.giarat]: Unknown method "
                                                                "'giarat'. Did you mean: gairat?"),
    ("[method_params]\nlrat = 3\n", "m.toml:2: method_params.lrat must be a table"),
])
def test_malformed_files_name_the_line_and_the_key(tmp_path, text, message):
    with pytest.raises(UsageError) as err:
        load_matrix_file(write(tmp_path, text))
    assert message in str(err.value)


def test_flags_the_user_typed_override_the_file_even_when_equal_to_the_default(tmp_path):
    path = write(tmp_path, "[matrix]\nseeds = [0, 1]\n[train]\nepochs = 3\ntrain_subset = 64\nattack_steps = 2\n"
                           "val_size = 32\n[eval]\nattacks = [\"natural\"]\ntest_subset = 32\n")
    base = ["run", "--config", str(path), "--dataset", "synthetic", "--dry-run", "--results", str(tmp_path / "r")]

    def work(*args):
        res = CliRunner().invoke(main, [*base, *args])
        assert res.exit_code == 0, res.output
        return [work_of(line) for line in res.output.splitlines() if line.startswith("pending")]

    assert work() == [3 * 64 * (2 + 1)] * 2  # epochs x train size x (attack steps + 1), seeds 0 and 1
    assert work("--seeds", "5") == [3 * 64 * 3]  # one seed: the flag replaced the file's list
    assert work("--epochs", "10") == [10 * 64 * 3] * 2  # 10 is also the flag's default: typed, so it wins


def test_datasets_and_models_expand_the_matrix_with_per_dataset_defaults():
    cells = cells_of({}, dataset="synthetic,cifar10", model="small-cnn,resnet18", methods="at", seeds="0")
    assert [(c.train.dataset, c.train.model) for c in cells] == [
        ("synthetic", "small-cnn"), ("synthetic", "resnet18"), ("cifar10", "small-cnn"), ("cifar10", "resnet18")]
    defaults = cells_of({}, dataset="synthetic,cifar10")
    assert [(c.train.model, round(c.train.eps, 6), c.train.augment) for c in defaults] == [
        ("cnn-bn", 0.1, False), ("resnet18", round(8 / 255, 6), True)]
    assert len({c.train.run_id for c in cells}) == 4


def test_file_parameters_of_methods_outside_the_run_are_ignored(tmp_path):
    values = load_matrix_file(write(tmp_path, "[method_params.gairat]\nlam = 0\n"))
    cells = cells_of(values, methods="at")
    assert [c.train.method for c in cells] == ["at"] and cells[0].train.method_params == {}


def test_l2_evaluation_with_an_explicit_budget():
    cell = cells_of({}, dataset="synthetic", threat_model="l2", eval_eps="1.5")[0]
    assert (cell.eval.threat_model, cell.eval.eps, cell.train.eps) == ("l2", 1.5, 0.1)
    assert cells_of({}, dataset="synthetic")[0].eval.eps is None  # L-inf: the training budget
    from bench.config.catalog import default_eps

    # L2 without a budget: the evaluation module's usual one, fixed in the cell so its eval group is known
    assert cells_of({}, dataset="synthetic", threat_model="l2")[0].eval.eps == default_eps("synthetic", "l2")


def test_work_estimate_by_hand():
    saa_cw = cells_of({}, dataset="synthetic", methods="lrat", train_attack="saa+cw", epochs=4, attack_steps=7)[0]
    # SAA: 3 targets x 20 steps; CW: 7 steps; +1 for the weight update
    assert grad_steps(saa_cw, n_train=100) == 4 * 100 * (60 + 7 + 1)
    assert grad_steps(saa_cw, n_train=100, epochs_done=3) == 1 * 100 * 68
    assert grad_steps(saa_cw, n_train=100, epochs_done=4) == 0
    assert hours(7200, 1.0) == 2.0 and hours(7200, None) is None


def test_dry_run_shows_finished_failed_and_pending_cells_with_the_work_left(tmp_path, monkeypatch, one_thread):
    import dataclasses

    import bench.execution.runner as runner_mod

    real = runner_mod.train_run
    monkeypatch.setattr(runner_mod, "train_run", lambda cfg, *a, **k: real(
        dataclasses.replace(cfg, lr=1e30) if cfg.seed == 1 else cfg, *a, **k))  # seed 1: NaN loss
    args = ["run", "--dataset", "synthetic", "--epochs", "1", "--train-subset", "64", "--val-size", "32",
            "--test-subset", "32", "--batch-size", "32", "--attack-steps", "2", "--eval-attacks", "natural",
            "--device", "cpu", "--results", str(tmp_path)]
    assert CliRunner().invoke(main, [*args, "--seeds", "0,1"]).exit_code == 1
    res = CliRunner().invoke(main, [*args, "--seeds", "0,1,2", "--dry-run", "--grad-steps-per-s", "0.0192"])
    assert res.exit_code == 0, res.output
    states = [(line.split()[0], line.split("seed ")[1][0], work_of(line))
              for line in res.output.splitlines() if " seed " in line]
    # finished: nothing left; failed: redone from its last epoch (none); pending: epochs x train size x (K + 1)
    assert states == [("finished", "0", 0), ("failed", "1", 192), ("pending", "2", 1 * 64 * 3)]
    assert "NonFiniteLoss: loss is nan" in res.output
    assert "3 cells: 1 finished, 0 running, 1 failed, 1 pending" in res.output
    assert "Work left: 384 example-gradient steps" in res.output and "about 5.56 worker-hours" in res.output


def test_the_smoke_matrix_resolves():
    cells = cells_of(load_matrix_file(ROOT / "experiments" / "smoke.toml"))
    assert [(c.train.method, c.train.seed) for c in cells] == [
        ("at", 0), ("at", 1), ("gairat", 0), ("gairat", 1), ("lrat", 0), ("lrat", 1)]
    assert {c.train.dataset for c in cells} == {"fashion-mnist"} and cells[4].train.method_params["anchor"] == "natural"


TABLE1 = ROOT / "experiments" / "lrat-table1-cifar10.toml"
TABLE1_ROWS = [("at", "pgd"), ("gairat", "pgd"), ("lsat", "cw"), ("lsat", "saa"), ("lrat", "cw"), ("lrat", "saa"),
               ("lrat", "saa+cw")]


def test_the_table1_recipe_has_the_papers_seven_rows_and_settings():
    cells = cells_of(load_matrix_file(TABLE1))
    assert [(c.train.method, c.train.train_attack) for c in cells] == TABLE1_ROWS
    t = cells[0].train
    assert (t.dataset, t.model, t.epochs, t.batch_size, t.lr, t.weight_decay, t.lr_milestones, t.precision) == (
        "cifar10", "resnet18", 100, 128, 0.1, 2e-4, (0.6, 0.9), "fp32")
    assert t.eps == pytest.approx(8 / 255) and t.attack_step_size == pytest.approx(8 / 255 / 10)
    assert (t.attack_steps, t.saa_targets, t.saa_steps, t.augment) == (10, 3, 20, True)
    assert cells[0].eval.checkpoints == ("epoch60", "epoch61", "best") and cells[0].eval.test_subset is None
    assert cells[0].eval.attacks == ("natural", "pgd20", "cw20", "aa")


def test_typed_flags_narrow_a_files_rows_and_rows_exclude_a_product(tmp_path):
    rows = load_matrix_file(TABLE1)
    assert [(c.train.method, c.train.train_attack) for c in cells_of(rows, methods="lrat")] == TABLE1_ROWS[4:]
    assert [c.train.method for c in cells_of(rows, train_attack="saa")] == ["lsat", "lrat"]
    with pytest.raises(UsageError, match="No row of the matrix file matches"):
        cells_of(rows, methods="mail")
    both = write(tmp_path, '[matrix]\nrows = [["at", "pgd"]]\nmethods = ["at"]\n')
    with pytest.raises(UsageError, match="rows and methods"):
        cells_of(load_matrix_file(both))
    bad = write(tmp_path, '[matrix]\nrows = [["at", "pgd", "cw"]]\n')
    with pytest.raises(UsageError, match=r"m.toml:2: key 'matrix.rows' must be a list of \["):
        load_matrix_file(bad)
    refused = write(tmp_path, '[matrix]\nrows = [["gairat", "saa+cw"]]\n')
    with pytest.raises(UsageError, match="takes one training attack"):
        cells_of(load_matrix_file(refused))


def test_the_table1_dry_run_prints_seven_cells_and_gpu_hours_without_cifar10(tmp_path):
    """Done-when of the studies issue: the plan and an estimate, on a machine without CIFAR-10, writing nothing."""
    speed = tmp_path / "speed.json"
    speed.write_text('{"settings": {"model": "resnet18", "batch_size": 512, "precision": "bf16"}, '
                     '"device": {"device": "GPU X"}, "rows": [{"method": "at", "train_attack": "pgd", '
                     '"attack_steps": 10, "images_per_s": 1000.0}]}')
    res = CliRunner().invoke(main, ["run", "--config", str(TABLE1), "--dry-run", "--speed-json", str(speed),
                                    "--results", str(tmp_path / "none"), "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    cells = [line for line in res.output.splitlines() if " seed 0 " in line]
    assert [line.split()[1].split("/")[0] for line in cells] == [m for m, _ in TABLE1_ROWS] and not (tmp_path / "none").exists()
    # at/pgd measured: 100 epochs x 49,000 images / 1,000 images/s; lrat saa+cw from 11,000 steps/s: x (60 + 10 + 1)
    assert "1.36 h" in cells[0] and f"{100 * 49000 * 71 / 11000 / 3600:.2f} h" in cells[6]
    assert "GPU-hours" in res.output and "GPU X" in res.output and "batch_size 128" in res.output
    speed.write_text(speed.read_text().replace('"GPU X"', '"cpu (x86_64, 2 threads)"'))  # a CPU's file: CPU hours
    res = CliRunner().invoke(main, ["run", "--config", str(TABLE1), "--dry-run", "--speed-json", str(speed),
                                    "--results", str(tmp_path / "none"), "--data-dir", str(tmp_path)])
    assert "CPU hours of training" in res.output and "GPU-hours" not in res.output, res.output


TABLE2 = ROOT / "experiments" / "lrat-table2-cifar10.toml"


def test_the_table2_recipe_plans_four_rows_and_its_saa_cw_row_is_table1s_run():
    cells = cells_of(load_matrix_file(TABLE2))
    assert [(c.train.method, c.train.train_attack, c.train.method_params["gd_attack"]) for c in cells] == [
        ("lrat", "pgd+cw", "pgd"), ("lrat", "pgd+saa", "pgd"), ("lrat", "saa+cw", "none"), ("lrat", "saa+cw+pgd", "pgd")]
    table1 = {c.train.train_attack: c.train.run_id for c in cells_of(load_matrix_file(TABLE1), methods="lrat")}
    assert cells[2].train.run_id == table1["saa+cw"]  # gd_attack names no variant of saa+cw: reset, same run
    assert cells[0].train.run_id not in table1.values()


def test_saa_steps_and_gd_refusals(tmp_path):
    path = write(tmp_path, '[train]\nsaa_steps = 5\n')
    assert cells_of(load_matrix_file(path), methods="lrat", train_attack="saa")[0].train.saa_steps == 5
    with pytest.raises(UsageError, match="saa-steps must be >= 1"):
        cells_of({}, saa_steps=0)
    with pytest.raises(UsageError, match="gd_attack=pgd needs at least 2 attack steps"):
        cells_of({}, methods="lrat", train_attack="pgd+cw", attack_steps=1, method_params=("lrat.gd_attack=pgd",))
    with pytest.raises(UsageError, match="trains on its own attack kl"):
        cells_of({}, methods="trades", train_attack="pgd")
    assert cells_of({}, methods="trades", train_attack="kl")[0].train.method_params == {"beta": 6.0}
