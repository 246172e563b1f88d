"""The `autoattack` shim (fra31 signature over pyautoattack), `robustbench.eval.benchmark` end to end through it,
robustbench's CIFAR test points against ours, and `bench export` (state dict, RobustBench's curated
model_info/<dataset>/<threat model>/<name>.json, provenance, a README whose load snippet runs)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from fractions import Fraction

import pytest
import torch
from click.testing import CliRunner
from pyautoattack import AutoAttack as PyAutoAttack
from support import CFG, N, Fragile, cifar_stand_in, modes, suite, tree, write_run

from bench.evaluation.autoattack_compat import install
from bench.cli import main
from bench.data import load_data, to_float
from bench.evaluation.evaluate import evaluate_run
from bench.export import CURATED_KEYS, format_eps, model_info, readme
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


def test_cifar_test_points_are_robustbench_load_cifar10s(monkeypatch, tmp_path):
    """The CIFAR protocol the README claims: bench.data's first N test points are exactly what
    robustbench.data.load_cifar10(N) returns (torchvision's test set, in its order, pixels / 255); both read
    torchvision's CIFAR10, stood in for here by one holding random pixels (no download)."""
    import robustbench.data
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar_stand_in(200, 250))
    x_rb, y_rb = robustbench.data.load_cifar10(n_examples=130, data_dir=str(tmp_path))
    test = load_data("cifar10", val_size=20, test_subset=130, data_dir=str(tmp_path)).test
    assert torch.equal(test.indices, torch.arange(130)) and torch.equal(test.y, y_rb)
    assert torch.equal(to_float(test.x), x_rb)


# --- bench export ---------------------------------------------------------------------------------------

@pytest.fixture
def evaluated(tmp_path, trained_state):
    """A stored run with natural and aa rows (eps 0.3: APGD-CE breaks every point, so AA stays cheap)."""
    store, run_id = write_run(tmp_path / "results", trained_state)
    test = load_data("synthetic", val_size=CFG.val_size, train_subset=CFG.train_subset, test_subset=N).test
    evaluate_run(store, run_id, suite("natural", "aa", eps=0.3), test, torch.device("cpu"))
    return store, run_id, test


def export(store, run_id, out, *extra):
    return CliRunner().invoke(main, ["export", run_id, "--results", str(store.root), "--out", str(out), "--eps", "0.3",
                                     *extra])


def curated(name: str) -> set[str]:
    """The files and folders an export of the synthetic run at L-inf writes, its curated file named `name`."""
    return {"model.pt", "provenance.json", "README.md", "model_info", "model_info/synthetic",
            "model_info/synthetic/Linf", f"model_info/synthetic/Linf/{name}.json"}


def test_export_writes_robustbench_curated_file_and_a_readme_that_loads_the_model(evaluated, tmp_path, monkeypatch):
    store, run_id, test = evaluated
    out = tmp_path / "export"
    result = export(store, run_id[:5], out)
    assert result.exit_code == 0, result.output
    name = f"lrat-bench_at_pgd_{run_id[:8]}"
    assert tree(out) == curated(name)
    text = (out / "model_info" / "synthetic" / "Linf" / f"{name}.json").read_text()
    info = json.loads(text)
    assert tuple(info) == CURATED_KEYS and text.startswith('{\n  "link": "",\n')  # its keys, order and indent
    group = eval_group("best", "linf", 0.3, N)
    natural = decode_flags(store.read_eval(run_id, group, "natural")["flags"])
    assert info == {"link": "", "name": name, "authors": "", "additional_data": False, "number_forward_passes": 1,
                    "dataset": "synthetic", "venue": "", "architecture": "SmallCNN", "eps": "0.3",
                    "clean_acc": f"{sum(natural) / N * 100:.2f}", "reported": "0.00", "autoattack_acc": "0.00",
                    "footnote": info["footnote"], "unreliable": True}  # AutoAttack on 48 of the 512 points
    assert f"on {N} test points (balanced-subset)" in info["footnote"] and run_id in info["footnote"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["model_info"] == f"model_info/synthetic/Linf/{name}.json"
    assert (prov["threat_model"], prov["eps"], prov["n_examples"]) == ("Linf", 0.3, N)
    assert prov["run_id"] == run_id and prov["accuracy"]["aa"] == 0.0 and prov["test_points"] == "balanced-subset"
    assert prov["unreliable_reasons"] == [f"AutoAttack ran on {N} of the 512 test points"]
    assert prov["accuracy_n_eval"] == {"natural": N, "aa": N, "worst": N}
    assert prov["model_sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert "guard_eval_mode" in prov["guards"]
    readme_text = (out / "README.md").read_text()
    assert readme_text in result.output and "robustbench.eval.benchmark" in readme_text
    assert prov["model_info"] in readme_text
    load_snippet, recheck_snippet = re.findall(r"```python\n(.*?)```", readme_text, re.S)
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(load_snippet, scope)  # the README's own code
    with torch.no_grad():
        flags = (scope["model"](to_float(test.x)).argmax(1) == test.y).tolist()
    assert flags == natural
    exec(recheck_snippet, scope)  # AutoAttack called directly, as the README says: the stored aa flags again
    assert (scope["y_adv"] == scope["y"]).tolist() == decode_flags(store.read_eval(run_id, group, "aa")["flags"])


def test_export_name_link_and_venue_land_in_the_file(evaluated, tmp_path):
    store, run_id, _ = evaluated
    out = tmp_path / "export"
    result = export(store, run_id, out, "--name", "Lab2025AT_PGD-R18", "--link", "https://example.org/at",
                    "--venue", "ICLR 2022")
    assert result.exit_code == 0, result.output
    assert tree(out) == curated("Lab2025AT_PGD-R18")
    info = json.loads((out / "model_info/synthetic/Linf/Lab2025AT_PGD-R18.json").read_text())
    assert (info["name"], info["link"], info["venue"]) == ("Lab2025AT_PGD-R18", "https://example.org/at", "ICLR 2022")
    assert (out / "README.md").read_text().startswith("# Lab2025AT_PGD-R18\n")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "with space", "x" * 101, "Model.json"])
def test_export_refuses_an_unsafe_name_and_writes_nothing(tmp_path, trained_state, name):
    store, run_id = write_run(tmp_path / "results", trained_state)
    before = tree(store.root)
    out = tmp_path / "export"
    result = export(store, run_id, out, "--name", name)
    assert result.exit_code == 2, result.output
    assert f"--name {name!r}" in result.output and ("not a safe file name" in result.output
                                                      or "without .json" in result.output)
    assert not out.exists() and tree(store.root) == before and tree(tmp_path) == {"results", *{
        f"results/{p}" for p in before}}


def test_curated_keys_are_robustbench_model_info_less_the_corruptions_keys():
    """robustbench 1.1.1 ships no model_info files (they live in its repository); its ModelInfo, which its
    update_json writes, has the curated keys in the same order except "unreliable" (a later key of the curated
    files) and the corruptions_* keys, which only the corruptions leaderboards' files carry."""
    fields = [f.name for f in dataclasses.fields(ModelInfo)]
    assert [k for k in fields if not k.startswith("corruptions_")] == [k for k in CURATED_KEYS if k != "unreliable"]


def test_robustbench_leaderboard_code_reads_an_exported_cifar_file(tmp_path, monkeypatch, capsys):
    """eps 8/255 is written "8/255", accuracies with two decimals, and robustbench's own reader of
    ./model_info/<dataset>/<threat model>/*.json (get_leaderboard_latex) takes the file."""
    from robustbench.utils import get_leaderboard_latex

    config = {"run_id": "0123456789ab", "train": {"dataset": "cifar10", "model": "resnet18"}}
    rows = {"natural": {"accuracy": 0.8512}, "aa": {"accuracy": 0.4, "eval_eps": 8 / 255, "eval_seed": 0,
                                                     "n_eval": 1000, "test_points": "first-n"}}
    info = model_info(config, rows, "Lab2025AT_R18", venue="ICLR 2022")
    assert (info["eps"], info["clean_acc"], info["reported"], info["autoattack_acc"]) == ("8/255", "85.12", "40.00",
                                                                                          "40.00")
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "Lab2025AT_R18.json").write_text(json.dumps(info, indent=2))
    monkeypatch.chdir(tmp_path)
    latex = get_leaderboard_latex("cifar10", "Linf")
    assert latex == "1 &\\citet{Lab2025AT} & 85.12 & 40.00 & N & RN-18 & ICLR 2022 & N/A\\\\"


@pytest.mark.parametrize("eps,text", [(8 / 255, "8/255"), (2 / 255, "2/255"), (16 / 255, "16/255"), (0.1, "0.1"),
                                      (0.5, "0.5"), (0.031, "0.031"), (0.3, "0.3"), (0.123456789, "0.123456789")])
def test_eps_is_written_as_robustbench_writes_it(eps, text):
    assert format_eps(eps) == text and float(Fraction(text)) == eps  # exact: it reads back as the same float


def test_export_files_honour_the_umask(evaluated, tmp_path, umask):
    """The exported files (and folders) are as readable as the umask says: 0644 under umask 022, where
    RobustBench submitters share them, 0600 under 077."""
    store, run_id, _ = evaluated
    out = tmp_path / "export"
    result = export(store, run_id, out)
    assert result.exit_code == 0, result.output
    paths = curated(f"lrat-bench_at_pgd_{run_id[:8]}")
    folders = {".", "model_info", "model_info/synthetic", "model_info/synthetic/Linf"}
    assert modes(out) == {p: (0o777 if p in folders else 0o666) & ~umask for p in paths | folders}


def test_export_readme_for_cifar_uses_robustbench_benchmark():
    info = {"name": "x", "clean_acc": "80.00", "autoattack_acc": "40.00", "eps": "8/255"}
    prov = {"threat_model": "Linf", "eps": 8 / 255, "n_examples": 1000, "checkpoint": "best", "checkpoint_epoch": 60,
            "guards_flagged": "", "eval_seed": 0, "model_info": "model_info/cifar10/Linf/x.json"}
    text = readme(info, prov, {"train": {"dataset": "cifar10", "model": "resnet18"}})
    assert "benchmark(model, dataset='cifar10', threat_model='Linf', eps=0.03137254901960784, n_examples=1000" in text
    assert "install()" in text and "build_model('resnet18', num_classes=10, in_channels=3" in text
    assert "| 80.00 % | 40.00 % | 8/255 | Linf | 1000 |" in text


def test_export_without_aa_rows_is_refused_and_writes_nothing(tmp_path, trained_state):
    store, run_id = write_run(tmp_path / "results", trained_state)
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", run_id, "--results", str(store.root), "--out", str(out)])
    assert result.exit_code == 2 and "bench eval" in result.output and not out.exists()
    result = CliRunner().invoke(main, ["export", "nosuch", "--results", str(store.root), "--out", str(out)])
    assert result.exit_code == 2 and "Unknown run 'nosuch'" in result.output
