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
    from bench.eval_attacks import EVAL_ATTACKS
    from bench.models import MODELS
    from bench.train_attacks import TRAIN_ATTACKS
    from methods import METHODS

    out = CliRunner().invoke(main, ["ls"]).output
    for name in [*METHODS, *TRAIN_ATTACKS, *EVAL_ATTACKS, *DATASETS, *MODELS]:
        assert f"  {name} " in out


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
