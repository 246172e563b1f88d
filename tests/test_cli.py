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
    (["--methods", "iart"], "Did you mean: irat?"),
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
