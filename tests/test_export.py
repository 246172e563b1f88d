"""The `autoattack` shim (fra31 signature over pyautoattack), `robustbench.eval.benchmark` end to end through it,
and `bench export` (state dict, RobustBench model_info, a README whose load snippet runs)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest
import torch
from click.testing import CliRunner
from pyautoattack import AutoAttack as PyAutoAttack
from support import CFG, N, Fragile, modes, suite, write_run

from bench.evaluation.autoattack_compat import install
from bench.cli import main
from bench.data import load_data, to_float
from bench.evaluation.evaluate import evaluate_run
from bench.store import decode_flags, eval_group

assert install()  # before robustbench is first imported
import robustbench.eval  # noqa: E402
from robustbench.utils import ModelInfo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shim_is_the_autoattack_module_robustbench_imports():
    import autoattack
    from autoattack.state import EvaluationState

    from pyautoattack.state import EvaluationState as Original

    assert robustbench.eval.AutoAttack is autoattack.AutoAttack and EvaluationState is Original
    assert install()  # idempotent


def test_fra31_signature_matches_pyautoattack(linear, tmp_path):
    from autoattack import AutoAttack

    model, x, y = linear
    log = tmp_path / "aa.log"
    adversary = AutoAttack(model, norm="Linf", eps=0.12, version="custom", attacks_to_run=["apgd-ce"], seed=0,
                           device="cpu", log_path=str(log))
    x_adv = adversary.run_standard_evaluation(x, y, bs=3)
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= 0.12 + 1e-6
    _, y_ours = adversary.run_standard_evaluation(x, y, bs=3, return_labels=True)
    direct = PyAutoAttack(model, attacks=["apgd-ce"], version="custom", eps=0.12, seed=0)
    _, y_direct = direct.run_standard_evaluation(x, y, batch_size=3)
    assert torch.equal(y_ours, y_direct) and 0 < (y_ours == y).sum() < len(y)
    assert "apgd-ce" in log.read_text()  # verbose=True (fra31's default) logs to log_path
    individual = adversary.run_standard_evaluation_individual(x, y, bs=4)
    assert list(individual) == ["apgd-ce"] and individual["apgd-ce"].shape == x.shape
    standard = AutoAttack(model, eps=0.1, attacks_to_run=["square"], device="cpu")  # ignored, as in fra31
    assert standard.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    with pytest.raises(NotImplementedError):
        AutoAttack(model, is_tf_model=True)


@pytest.mark.parametrize("threat_model,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_robustbench_benchmark_runs_end_to_end(monkeypatch, threat_model, eps):
    """robustbench.eval.benchmark, unchanged, on a swapped-in tiny CIFAR-shaped set (no network)."""
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    seen = {}

    def loader(dataset, n_examples, data_dir, prepr):
        seen["args"] = (dataset.value, n_examples)
        return x[:n_examples], y[:n_examples]

    monkeypatch.setattr(robustbench.eval, "load_clean_dataset", loader)
    fragile = Fragile(x, y).eval()  # right on every clean point, wrong after any perturbation
    clean, robust = robustbench.eval.benchmark(fragile, n_examples=6, dataset="cifar10", threat_model=threat_model,
                                               eps=eps, batch_size=6, device=torch.device("cpu"))
    assert seen["args"] == ("cifar10", 6) and (clean, robust) == (1.0, 0.0)
    wrong = y.clone()
    wrong[:2] = (wrong[:2] + 1) % 10
    half = Fragile(x, wrong).eval()  # 4 of 6 clean points right
    clean, robust = robustbench.eval.benchmark(half, n_examples=6, dataset="cifar10", threat_model=threat_model,
                                               eps=eps, batch_size=4, device=torch.device("cpu"))
    assert clean == pytest.approx(4 / 6) and robust == 0.0


# --- bench export ---------------------------------------------------------------------------------------

@pytest.fixture
def evaluated(tmp_path, trained_state):
    """A stored run with natural and aa rows (eps 0.3: APGD-CE breaks every point, so AA stays cheap)."""
    store, run_id = write_run(tmp_path / "results", trained_state)
    test = load_data("synthetic", val_size=CFG.val_size, train_subset=CFG.train_subset, test_subset=N).test
    evaluate_run(store, run_id, suite("natural", "aa", eps=0.3), test, torch.device("cpu"))
    return store, run_id, test


def test_export_writes_model_info_and_a_readme_that_loads_the_model(evaluated, tmp_path, monkeypatch):
    store, run_id, test = evaluated
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", run_id[:5], "--results", str(store.root), "--out", str(out),
                                       "--eps", "0.3"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "model_info.json").read_text())
    assert {f.name for f in dataclasses.fields(ModelInfo)} <= set(info)
    group = eval_group("best", "linf", 0.3, N)
    natural = decode_flags(store.read_eval(run_id, group, "natural")["flags"])
    assert info["clean_acc"] == str(round(sum(natural) / N * 100, 2)) and info["autoattack_acc"] == "0.0"
    assert (info["eps"], info["threat_model"], info["n_examples"]) == (0.3, "Linf", N)
    assert (info["architecture"], info["dataset"], info["additional_data"]) == ("SmallCNN", "synthetic", False)
    lb = info["lrat_bench"]
    assert lb["run_id"] == run_id and lb["accuracy"]["aa"] == 0.0 and lb["test_points"] == "balanced-subset"
    assert lb["model_sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert "guard_eval_mode" in lb["guards"]
    readme = (out / "README.md").read_text()
    assert readme in result.output and "robustbench.eval.benchmark" in readme
    load_snippet, recheck_snippet = re.findall(r"```python\n(.*?)```", readme, re.S)
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(load_snippet, scope)  # the README's own code
    with torch.no_grad():
        flags = (scope["model"](to_float(test.x)).argmax(1) == test.y).tolist()
    assert flags == natural
    exec(recheck_snippet, scope)  # AutoAttack called directly, as the README says: the stored aa flags again
    assert (scope["y_adv"] == scope["y"]).tolist() == decode_flags(store.read_eval(run_id, group, "aa")["flags"])


def test_export_files_honour_the_umask(evaluated, tmp_path, umask):
    """model.pt, model_info.json and README.md (and the folder) are as readable as the umask says: 0644 under
    umask 022, where RobustBench submitters share them, 0600 under 077."""
    store, run_id, _ = evaluated
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", run_id, "--results", str(store.root), "--out", str(out),
                                       "--eps", "0.3"])
    assert result.exit_code == 0, result.output
    expected = {".": 0o777 & ~umask, **{name: 0o666 & ~umask for name in ("model.pt", "model_info.json", "README.md")}}
    assert modes(out) == expected


def test_export_readme_for_cifar_uses_robustbench_benchmark():
    from bench.export import readme

    info = {"name": "x", "clean_acc": "80.0", "autoattack_acc": "40.0", "eps": 8 / 255, "threat_model": "Linf",
            "n_examples": 1000, "lrat_bench": {"checkpoint": "best", "checkpoint_epoch": 60, "guards_flagged": "",
                                               "eval_seed": 0}}
    text = readme(info, {"train": {"dataset": "cifar10", "model": "resnet18"}})
    assert "benchmark(model, dataset='cifar10', threat_model='Linf', eps=0.03137254901960784, n_examples=1000" in text
    assert "install()" in text and "build_model('resnet18', num_classes=10, in_channels=3" in text


def test_export_without_aa_rows_is_refused_and_writes_nothing(tmp_path, trained_state):
    store, run_id = write_run(tmp_path / "results", trained_state)
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", run_id, "--results", str(store.root), "--out", str(out)])
    assert result.exit_code == 2 and "bench eval" in result.output and not out.exists()
    result = CliRunner().invoke(main, ["export", "nosuch", "--results", str(store.root), "--out", str(out)])
    assert result.exit_code == 2 and "Unknown run 'nosuch'" in result.output
