"""Every value is checked before anything is written, whatever its source: flags, a matrix file (TOML) or
method parameters. A value that could only fail after the work (or never finish) exits 2 naming the flag, or
the file's line and key, with --dry-run and without it, and leaves the results directory as it was."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from support import BASE, tree

from bench.cli import main







def refused(results: Path, args: list[str], dry_run: bool) -> str:
    before = tree(results)
    res = CliRunner().invoke(main, [*args, "--results", str(results), *(["--dry-run"] if dry_run else [])])
    assert res.exit_code == 2, (res.output, res.exception)
    assert tree(results) == before  # no run directory, no lock
    return " ".join(res.output.split())  # click wraps long messages


# synthetic: 1,536 training points (32 of them validation here, 64 used), 512 test points, 1 x 28 x 28 inputs
FLAG_CASES = [
    # L2 budget beyond sqrt(d) = 28, the check `bench eval` and the eps guard refuse with
    (["--threat-model", "l2", "--eval-eps", "100"],
     "--eval-eps on synthetic (1 x 28 x 28 inputs): L2 epsilon 100 exceeds sqrt(d) = 28"),
    (["--threat-model", "l2", "--eval-eps", "inf"], "L2 epsilon inf exceeds sqrt(d) = 28"),
    (["--threat-model", "l2", "--eval-eps", "nan"], "--eval-eps: Epsilon must be >= 0, got nan"),
    # a validation split that leaves nothing to train on (ZeroDivisionError once the cell ran)
    (["--val-size", "1536"], "--val-size must be smaller than the training set of synthetic (1,536 points), got 1,536"),
    (["--val-size", "100000"], "--val-size must be smaller than the training set of synthetic"),
    # subsets larger than their split: refused, not cut silently
    (["--test-subset", "513"], "--test-subset must be at most the size of synthetic's test set (512 points), got 513"),
    (["--train-subset", "1505"], "--train-subset must be at most the 1,504 training points synthetic keeps"),
    (["--batch-size", "65"], "--batch-size must be at most the training set (64 points of synthetic), got 65"),
    # method parameters: NaN, infinities where they mean nothing, out of range, a list
    (["--methods", "gairat", "--method-param", "gairat.lam=nan"],
     "--method-param gairat.lam=nan: Method parameter gairat.lam must be a finite number"),
    (["--methods", "mail", "--method-param", "mail.slope=inf"], "mail.slope must be a finite number, got 'inf'"),
    (["--methods", "mail", "--method-param", "mail.bias=-inf"], "mail.bias must be a finite number"),
    (["--methods", "lrat", "--method-param", "lrat.alpha=1e400"], "lrat.alpha must be a finite number"),
    (["--methods", "gairat", "--method-param", "gairat.burn_in=2"], "gairat.burn_in must lie in [0.0, 1.0]"),
    (["--methods", "lrat", "--method-param", "lrat.C=-1"], "lrat.C must lie in [0.0, inf]"),
    # absurd sizes: upper bounds where a value can only be a typo (bench/config/limits.py)
    (["--epochs", str(10**26)], "--epochs must be at most 10,000"),
    (["--attack-steps", "1000000"], "--attack-steps must be at most 10,000"),
    (["--lr", "1e308"], "--lr must be a finite number > 0 and at most 10"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "-0.1"], "--lr must be a finite number > 0"),
    (["--train-subset", "1504", "--batch-size", "1504", "--lr", "1", "--lr-scale", "linear"],
     "The learning rate 11.75 (--lr 1 x --batch-size 1504 / 128, --lr-scale linear) is above 10"),
    (["--weight-decay", "2"], "--weight-decay must be a finite number >= 0 and at most 1"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    (["--seeds", str(2**63)], f"--seeds must lie in [0, 2^32 - 1 = 4294967295], got {2**63}"),
    (["--seeds", f"0,{2**63 - 1}"], "--seeds must lie in [0, 2^32 - 1"),
    (["--seeds", "-1"], "--seeds must lie in [0, 2^32 - 1 = 4294967295], got -1"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1, got 0"),
    # budgets and step sizes: negative, NaN, infinite, not a number
    (["--step-size=-0.1"], "--step-size: Step size must be >= 0, got -0.1"),
    (["--step-size", "nan"], "--step-size: Step size must be >= 0, got nan"),
    (["--step-size", "2"], "--step-size: Step size 2 is larger than 1"),
    (["--step-size", "1/0"], "Cannot read step size '1/0'"),
    (["--eps", "inf"], "--eps: Epsilon inf is larger than 1"),
    (["--eps", "1e400"], "--eps: Epsilon 1e400 is larger than 1"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("args,message", FLAG_CASES, ids=[" ".join(a)[:40] for a, _ in FLAG_CASES])
def test_flags_are_checked_before_anything_is_written(results, args, message, dry_run):
    assert message in refused(results, [*BASE, *args], dry_run)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "experiments")
                                           .glob("*.toml")))
def test_the_bounds_leave_every_shipped_recipe_alone(recipe):
    from bench.cli.common import RUN_DEFAULTS
    from bench.config.matrix_cells import resolve
    from bench.config.matrix_file import load_matrix_file
    from bench.config.matrix_merge import merge

    path = Path(__file__).resolve().parents[1] / "experiments" / recipe
    assert resolve(merge(RUN_DEFAULTS, load_matrix_file(path), {}))


def test_a_default_batch_larger_than_a_tiny_subset_is_one_batch_not_an_error(results):
    """Only a batch size the user gave is held to the training set: the default 128 on the 64-point subsets
    of quick runs and tests trains on one batch per epoch, as before."""
    from bench.cli.common import RUN_DEFAULTS
    from bench.config.matrix_cells import resolve
    from bench.config.matrix_merge import merge

    flags = {"dataset": "synthetic", "train_subset": 64, "val_size": 32}
    cells = resolve(merge(RUN_DEFAULTS, {}, flags))
    assert cells[0].train.batch_size == 128 and cells[0].train.train_subset == 64


# (file text, message): each names the file's line and the key. The command line adds only --dataset synthetic.
TOML_CASES = [
    ("[train]\nepochs = 1e26\n", "m.toml:2: key 'train.epochs' must be an integer, got 1e+26"),
    ("[train]\nepochs = 100000000000000000000\n", "m.toml:2: key 'train.epochs' must be at most 10,000"),
    ("[train]\nepochs = [3]\n", "m.toml:2: key 'train.epochs' must be an integer, got [3]"),
    ("[train]\nlr = [0.1]\n", "m.toml:2: key 'train.lr' must be a number, got [0.1]"),
    ("[train]\nlr = nan\n", "m.toml:2: key 'train.lr' must be a finite number > 0"),
    ("[train]\nlr = 1e308\n", "m.toml:2: key 'train.lr' must be a finite number > 0 and at most 10"),
    ("[train]\nlr = 100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
     "000000000000000000\n", "m.toml:2: key 'train.lr' must be a finite number > 0"),
    ("[train]\nweight_decay = inf\n", "m.toml:2: key 'train.weight_decay' must be a finite number >= 0"),
    ("[train]\nbatch_size = 100000\n", "m.toml:2: key 'train.batch_size' must be at most the training set"),
    ("[train]\nval_size = 1536\n", "m.toml:2: key 'train.val_size' must be smaller than the training set"),
    ("[train]\nstep_size = -0.1\n", "m.toml:2: key 'train.step_size': Step size must be >= 0, got -0.1"),
    ("[train]\nstep_size = nan\n", "m.toml:2: key 'train.step_size': Step size must be >= 0, got nan"),
    ("[train]\neps = inf\n", "m.toml:2: key 'train.eps': Epsilon inf is larger than 1"),
    ("[train]\nattack_steps = [10]\n", "m.toml:2: key 'train.attack_steps' must be an integer, got [10]"),
    ("[matrix]\nseeds = [0, 18446744073709551616]\n", "m.toml:2: key 'matrix.seeds' must lie in [0, 2^32 - 1"),
    ("[matrix]\nseeds = [[0]]\n", "m.toml:2: key 'matrix.seeds' must be a list of integers"),
    ("[eval]\nthreat_model = \"l2\"\neps = 100\n",
     "m.toml:3: key 'eval.eps' on synthetic (1 x 28 x 28 inputs): L2 epsilon 100 exceeds sqrt(d) = 28"),
    ("[eval]\ntest_subset = 100000\n", "m.toml:2: key 'eval.test_subset' must be at most the size of synthetic's "
                                       "test set (512 points)"),
    ("[eval]\ntest_subset = [10]\n", "m.toml:2: key 'eval.test_subset' must be an integer, got [10]"),
    ("[eval]\nbatch_size = 0\n", "m.toml:2: key 'eval.batch_size' must be >= 1, got 0"),
    ("[matrix]\nmethods = [\"gairat\"]\n[method_params.gairat]\nlam = nan\n",
     "m.toml:3: [method_params.gairat]: Method parameter gairat.lam must be a finite number"),
    ("[matrix]\nmethods = [\"mail\"]\n[method_params.mail]\nslope = [1.0]\n",
     "m.toml:3: [method_params.mail]: Method parameter mail.slope must be a float, got [1.0]"),
    ("[matrix]\nmethods = [\"mail\"]\n[method_params.mail]\nbias = -inf\n",
     "m.toml:3: [method_params.mail]: Method parameter mail.bias must be a finite number"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("text,message", TOML_CASES, ids=[t.split("\n")[-2][:30] for t, _ in TOML_CASES])
def test_matrix_file_values_are_checked_with_their_line_and_key(results, tmp_path, text, message, dry_run):
    path = tmp_path / "m.toml"
    path.write_text(text)
    assert message in refused(results, ["run", "--config", str(path), "--dataset", "synthetic"], dry_run)


def test_a_flag_overriding_a_bad_file_value_is_named_as_the_flag(results, tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[train]\nval_size = 32\n[eval]\ntest_subset = 32\n")
    out = refused(results, ["run", "--config", str(path), "--dataset", "synthetic", "--val-size", "5000"], True)
    assert "--val-size must be smaller than the training set" in out and "m.toml" not in out
