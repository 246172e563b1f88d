"""RobustBench in the project's environment. `import robustbench` works with no manual step (the installed
lrat_bench_autoattack.pth appends a fallback `autoattack` finder), a real autoattack wins over the fallback, and
start-up imports neither torch nor bench. `bench eval --robustbench NAME --model-dir DIR` evaluates a zoo
architecture from a checkpoint on disk, offline (nothing downloaded; a missing file refused naming its path),
stored as an external run that `bench report` shows beside the trained runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from support import cifar_stand_in

from bench.cli import main

NOT_INSTALLED = "lrat_bench_autoattack.pth is not installed here: `pip install -e .` (make install) installs it"


def python(code: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter of this environment, outside the checkout (so only what is installed counts)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_import_robustbench_works_with_no_manual_step(tmp_path):
    proc = python("import robustbench\nfrom robustbench.utils import load_model\nimport autoattack\n"
                  "assert autoattack.__lrat_bench_shim__\nprint(type(autoattack.AutoAttack).__name__)", tmp_path)
    assert proc.returncode == 0, f"{NOT_INSTALLED}\n{proc.stderr[-3000:]}"


def test_start_up_stays_light_and_a_real_autoattack_wins(tmp_path):
    proc = python("import sys\nassert 'lrat_bench_autoattack' in sys.modules, 'no .pth'\n"
                  "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'bench', 'pyautoattack', "
                  "'autoattack', 'robustbench'}))", tmp_path)
    assert proc.returncode == 0, f"{NOT_INSTALLED}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "[]"  # the finder waits for `import autoattack`: no torch at start-up
    real = tmp_path / "real" / "autoattack"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    proc = python("import autoattack\nassert autoattack.REAL\n"
                  "from bench.evaluation.autoattack_compat import install\nassert not install()",
                  tmp_path, {"PYTHONPATH": str(tmp_path / "real")})
    assert proc.returncode == 0, proc.stderr[-2000:]


ZOO_NAME = "Wong2020Fast"  # a PreAct ResNet-18 (11M parameters), a small entry of the CIFAR-10 Linf zoo


@pytest.fixture
def offline_cifar(monkeypatch):
    """torchvision's CIFAR10 stood in for by random pixels (no files, no download), and robustbench's
    downloader replaced by one that fails the test."""
    import robustbench.utils
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError(f"robustbench tried to download {args}")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar_stand_in(1024, 64))
    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", no_download)


def write_zoo_checkpoint(model_dir) -> None:
    """Random weights of the zoo entry's architecture, saved where load_model reads them (a plain state dict)."""
    from bench.evaluation.robustbench_zoo import zoo_entries

    torch.manual_seed(0)
    net = zoo_entries("cifar10", "linf")[ZOO_NAME]["model"]()
    path = model_dir / "cifar10" / "Linf" / f"{ZOO_NAME}.pt"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)


def test_a_zoo_model_is_evaluated_offline_from_its_local_checkpoint_and_reported(tmp_path, offline_cifar,
                                                                                 one_thread):
    results, models = tmp_path / "results", tmp_path / "models"
    args = ["eval", "--robustbench", ZOO_NAME, "--dataset", "cifar10", "--threat-model", "Linf", "--results",
            str(results), "--eval-attacks", "natural,pgd20", "--test-subset", "4", "--eval-batch-size", "4",
            "--device", "cpu", "--data-dir", str(tmp_path)]
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, [*args, "--model-dir", str(tmp_path / "empty")])
    expected = tmp_path / "empty" / "cifar10" / "Linf" / f"{ZOO_NAME}.pt"
    assert res.exit_code == 2 and str(expected) in " ".join(res.output.split()), res.output
    assert not results.exists()  # refused before anything is written
    write_zoo_checkpoint(models)
    res = CliRunner().invoke(main, [*args, "--model-dir", str(models)])
    assert res.exit_code == 0, res.output
    from bench import api

    rows = api.results(results)
    assert set(rows.method) == {ZOO_NAME.lower()} and set(rows.train_attack) == {"external"}
    assert set(rows.eval_attack) == {"natural", "pgd20", "worst"} and set(rows.n_eval) == {4}
    report = CliRunner().invoke(main, ["report", "--results", str(results), "--out", str(tmp_path / "out"),
                                       "--no-pdf"])
    assert report.exit_code == 0, report.output
    assert f"{ZOO_NAME.lower()} (external)" in (tmp_path / "out" / "summary.md").read_text()


def test_zoo_names_and_settings_are_checked_before_anything_is_loaded(tmp_path):
    from bench import api
    from bench.config.names import UsageError

    with pytest.raises(UsageError, match="Did you mean: Wong2020Fast"):
        api.robustbench_model("Wong2020Fats", tmp_path, "cifar10", "linf")
    with pytest.raises(UsageError, match="covers cifar10, cifar100"):
        api.robustbench_model(ZOO_NAME, tmp_path, "svhn", "linf")
    with pytest.raises(UsageError, match="Linf, L2"):
        api.robustbench_model(ZOO_NAME, tmp_path, "cifar10", "corruptions")
    res = CliRunner().invoke(main, ["eval", "--robustbench", ZOO_NAME, "--dataset", "cifar10"])
    assert res.exit_code == 2 and "needs --model-dir" in res.output
    res = CliRunner().invoke(main, ["eval", "--robustbench", ZOO_NAME, "--model-file", "x.py:f"])
    assert res.exit_code == 2 and "give one of them" in res.output
