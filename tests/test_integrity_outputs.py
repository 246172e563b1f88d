"""Issue 24, items 1 and 2: no number is stored from an adversarial example outside the threat model or from a
model output that is not finite (batch, classes) logits. Each probe of the issue, as a hostile user would try it:
plugin evaluation attacks that return zeros, NaN, one example for a batch of 32, values outside [0, 1]; a
built-in attack (PGD, AutoAttack) broken on purpose; a 13-logit plugin model; a float-image plugin dataset; an
external model with NaN logits or without parameters; a plugin loss returning a float; a model factory
returning a string. Each asserts the sentence and that nothing is stored for it."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from support import BASE, CFG, ENV, N, TinyNet, invoke, suite, tree, write_run

import bench.api as api
import bench.evaluation.attacks as A
from bench.attacks.pgd import AttackResult
from bench.config.catalog import DatasetEntry, EvalAttackEntry
from bench.config.names import UsageError
from bench.data import load_data
from bench.evaluation.evaluate import evaluate_run
from bench.evaluation.guards import GuardFailure, check_model, check_zero_grad
from bench.evaluation.integrity import L2_RTOL, LINF_ATOL, AdversarialViolation
from bench.plugins import DatasetPlugin, EvalAttackPlugin
from bench.store import DONE, FAILED, TRAINED, Store, eval_group
from methods.base import Method, StepOutput

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.02  # support.suite's budget
CPU = torch.device("cpu")
RUN = [*BASE, "--batch-size", "32", "--attack-steps", "1", "--device", "cpu"]


@pytest.fixture
def plugin():
    """plugin(kind, name, obj): registered as a `--plugin` module's component is (bench.plugins.register), and
    removed from every registry after the test."""
    import bench.data
    import bench.models
    import methods
    from bench import plugins
    from bench.config import catalog

    registries = [catalog.METHODS, catalog.MODELS, catalog.DATASETS, catalog.EVAL_ATTACKS, plugins.SOURCES,
                  *plugins.REGISTERED.values(), A.EVAL_ATTACKS, A.PLUGIN_BUILDERS, bench.data.DATASETS,
                  bench.data.PLUGIN_LOADERS, bench.models.MODELS, methods.METHODS]
    saved = [dict(r) for r in registries]
    yield lambda kind, name, obj: plugins.register(kind, name, obj, "plugin module probe.py (--plugin)")
    for registry, before in zip(registries, saved):
        registry.clear()
        registry.update(before)


@pytest.fixture
def stored(tmp_path, trained_state):
    """A finished run (small-cnn fitted to the synthetic data) and its N test points."""
    store, run_id = write_run(tmp_path / "results", trained_state)
    test = load_data("synthetic", val_size=CFG.val_size, train_subset=CFG.train_subset, test_subset=N).test
    return store, run_id, test


def group_files(store: Store, run_id: str, threat_model: str = "linf", eps: float = EPS) -> set[str]:
    folder = store.run_dir(run_id) / "evals" / eval_group("best", threat_model, eps, N)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def eval_attack(build) -> EvalAttackPlugin:
    """A plugin evaluation attack whose call is `build(x) -> what the attack returns`."""
    return EvalAttackPlugin(EvalAttackEntry("Probe", "a misbehaving attack", 2),
                            lambda eps, threat_model: (lambda model, x, y: build(x)))


# ---- item 1: every adversarial example checked -------------------------------------------------------------

def below_zero(x: torch.Tensor) -> AttackResult:
    """x with one pixel at -0.001: within eps of it, not an image."""
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = -0.001
    return AttackResult(x_adv, None)


PROBES = {  # name: (what the attack returns for a batch x, what the refusal says)
    "zeros": (lambda x: AttackResult(torch.zeros_like(x), None), "left the L-inf ball: max perturbation "),
    "nan": (lambda x: AttackResult(torch.full_like(x, float("nan")), None), "non-finite (NaN or infinite) values"),
    "one": (lambda x: AttackResult(x[:1].clone(), None), "x_adv of shape (1, 1, 28, 28), torch.float32 on cpu for "
                                                         "inputs of shape (32, 1, 28, 28)"),
    "range": (below_zero, "returned x_adv spanning [-0.001, "),
    "double": (lambda x: AttackResult(x.double(), None), "torch.float64"),
    "none": (lambda x: None, "returned a NoneType, not an AttackResult"),
}


@pytest.mark.parametrize("name", PROBES)
def test_a_plugin_attack_out_of_the_ball_nan_or_misshapen_stores_nothing(stored, plugin, name):
    store, run_id, test = stored
    build, says = PROBES[name]
    plugin("eval_attacks", name, eval_attack(build))
    with pytest.raises(AdversarialViolation) as err:
        evaluate_run(store, run_id, suite("natural", name, batch_size=32), test, CPU)
    message = str(err.value)
    assert message.startswith(f"Evaluation attack '{name}' ") and says in message, message
    assert "on batch 1 of 2: 32 points at test positions 0-" in message and f"Nothing is stored for '{name}'" in message
    assert group_files(store, run_id) == {"natural.json"}  # natural went first; nothing of the probe, no worst row


def test_bench_run_fails_each_cell_with_the_sentence_and_goes_on(tmp_path, plugin):
    plugin("eval_attacks", "nan", eval_attack(PROBES["nan"][0]))
    res = invoke(*RUN, "--eval-attacks", "natural,nan", "--seeds", "0,1", "--results", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output
    assert "2 failed" in res.output and "Traceback" not in res.output
    assert "AdversarialViolation: Evaluation attack 'nan' returned" in res.output
    store = Store(tmp_path / "r")
    for run_id in store.run_ids():  # both cells trained, evaluated natural, refused the probe
        assert store.has(run_id, TRAINED) and store.has(run_id, FAILED) and not store.has(run_id, DONE)
        assert not list(store.run_dir(run_id).rglob("nan.json")) and list(store.run_dir(run_id).rglob("natural.json"))
    assert store.load_rows() == []


def test_bench_eval_with_a_plugin_module_refuses_the_zeros_attack_by_name(stored, tmp_path):
    """`bench --plugin FILE.py eval` in a process of its own: exit 1, the sentence, no traceback, no row."""
    store, run_id, _ = stored
    module = tmp_path / "zeros_attack.py"
    module.write_text(
        "import torch\nfrom bench.attacks.pgd import AttackResult\nfrom bench.config.catalog import EvalAttackEntry\n"
        "from bench.plugins import EvalAttackPlugin\n"
        "ZEROS = EvalAttackPlugin(EvalAttackEntry('Zeros', 'black images', 2),\n"
        "                         lambda eps, tm: lambda model, x, y: AttackResult(torch.zeros_like(x), None))\n"
        "LRAT_BENCH = {'eval_attacks': {'zeros': ZEROS}}\n")
    out = subprocess.run([sys.executable, "-m", "bench", "--plugin", str(module), "eval", "--results", str(store.root),
                          "--eval-attacks", "natural,zeros", "--test-subset", str(N), "--eps", str(EPS),
                          "--device", "cpu"], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"REFUSED at/pgd seed 0 [{run_id}]: Evaluation attack 'zeros' left the L-inf ball" in out.stderr
    assert "Traceback" not in out.stderr and "1 run(s) refused by a guard" in out.stderr
    assert group_files(store, run_id) == {"natural.json"}


def test_a_builtin_pgd_broken_on_purpose_is_refused(stored, monkeypatch):
    store, run_id, test = stored
    real = A.build_pgd
    monkeypatch.setattr(A, "build_pgd", lambda name, eps, tm: dataclasses.replace(real(name, eps, tm), eps=3 * eps))
    with pytest.raises(AdversarialViolation, match=r"'pgd20' left the L-inf ball: max perturbation 0\.06 > eps 0\.02 "
                                                   r"\(tolerance 1e-05\) on batch 1 of 1"):
        evaluate_run(store, run_id, suite("natural", "pgd20"), test, CPU)
    assert group_files(store, run_id) == {"natural.json"}


def test_autoattack_x_adv_is_checked_and_a_refused_one_leaves_no_state(stored, monkeypatch):
    """pyautoattack's x_adv goes through the same check; a broken component is named, its progress removed."""
    from pyautoattack import AutoAttack

    store, run_id, test = stored

    def pushed(self, x, y, batch_size=None, state_path=None):
        return (x + 0.5).clamp(0, 1), y

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", pushed)
    with pytest.raises(AdversarialViolation, match=r"'aa' left the L-inf ball: .* on its apgd-ce batch 1 of 1"):
        evaluate_run(store, run_id, suite("natural", "aa"), test, CPU)
    assert group_files(store, run_id) == {"natural.json"}  # no aa.json, no aa.aa_state


def test_the_largest_perturbation_is_stored_and_within_the_budget(stored):
    store, run_id, test = stored
    rows = {r["eval_attack"]: r for r in evaluate_run(store, run_id, suite("natural", "fgsm", "pgd20"), test, CPU)}
    assert rows["natural"]["max_perturbation"] == 0.0
    assert EPS - 1e-6 <= rows["fgsm"]["max_perturbation"] <= EPS + LINF_ATOL  # one full step of eps
    assert 0 < rows["pgd20"]["max_perturbation"] <= EPS + LINF_ATOL
    assert rows["worst"]["max_perturbation"] == max(rows[a]["max_perturbation"] for a in ("natural", "fgsm", "pgd20"))
    l2 = {r["eval_attack"]: r for r in evaluate_run(store, run_id, suite("pgd20", eps=0.5, threat_model="l2"),
                                                   test, CPU)}
    assert 0.4 < l2["pgd20"]["max_perturbation"] <= 0.5 * (1 + L2_RTOL) + LINF_ATOL


@pytest.mark.parametrize("attack,threat_model,eps", [("aa", "linf", 0.12), ("apgd-t", "l2", 0.5), ("fab-t", "l2", 0.5)])
def test_real_autoattack_passes_its_check_and_reports_its_perturbation(linear, attack, threat_model, eps):
    """The check never refuses AutoAttack's own projections (L2: its components apart, as Square's L2 search
    needs images of at least 5x5 pixels and these are 4x4)."""
    model, x, y = linear
    out = A.run_eval_attack(model, x, y, attack, eps=eps, threat_model=threat_model, batch_size=3)
    tol = LINF_ATOL if threat_model == "linf" else eps * L2_RTOL + LINF_ATOL
    assert out.flags.sum() < 8 and 0 < out.info["max_perturbation"] <= eps + tol


# ---- item 2: every model output checked ----------------------------------------------------------------------

class Thirteen(nn.Module):
    """Ignores the number of classes it is given: 13 logits."""

    def __init__(self, in_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, 13)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_13_logit_plugin_model_is_refused_at_training_start(tmp_path, plugin, batch):
    plugin("models", "thirteen", lambda k, c, s: Thirteen(c * s * s))
    res = invoke(*RUN, "--model", "thirteen", "--results", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output
    assert ("ModelOutputError: Model 'thirteen' (plugin module probe.py (--plugin)) returns a tensor of shape (2, 13) "
            "for 2 synthetic inputs; synthetic has 10 classes, so logits must have shape (2, 10)") in res.output
    run_dir = next((tmp_path / "r" / "runs").iterdir())
    assert not list(run_dir.glob("*.pt")) and not (run_dir / TRAINED).exists() and not (run_dir / "evals").exists()
    x, y = batch  # and at evaluation, a refusal (not a flag) in the model guards
    with pytest.raises(GuardFailure, match=r"returns a tensor of shape \(32, 13\) for 32 inputs; expected logits of "
                                           r"shape \(32, 10\) \(the dataset has 10 classes\)"):
        check_model(Thirteen(784).eval(), x, y, EPS, "linf", num_classes=10)


def _synthetic(images=None, labels=None):
    """The synthetic dataset's loader, its images or labels replaced."""
    from bench.data import _synthetic as real

    def load(data_dir):
        (xt, yt), (xs, ys) = real(128, 64)
        return ((images(xt) if images else xt, labels(yt) if labels else yt),
                (images(xs) if images else xs, labels(ys) if labels else ys))
    return DatasetPlugin(DatasetEntry("Probe", 10, 1, 28, False, "a misbehaving dataset", 128, 64, 0.1, 1.5), load)


@pytest.mark.parametrize("dataset,says", [
    (_synthetic(images=lambda x: x.float() / 255), "images are torch.float32; expected torch.uint8 (pixels 0-255"),
    (_synthetic(labels=lambda y: y + 1), "labels span [1, 10]; the dataset has 10 classes, so labels must lie in "
                                         "[0, 9]"),
    (_synthetic(labels=lambda y: y.float()), "labels must be a 1-D integer tensor"),
])
def test_a_plugin_dataset_with_float_images_or_bad_labels_is_refused(results, plugin, dataset, says):
    plugin("datasets", "probe-data", dataset)
    before = tree(results)
    res = invoke(*RUN, "--dataset", "probe-data", "--results", str(results))
    assert res.exit_code == 2 and says in res.output, res.output
    assert "Dataset 'probe-data' (plugin module probe.py (--plugin)), train split" in res.output
    assert tree(results) == before


class NaNNet(TinyNet):
    def __init__(self, from_batch: int = 0):
        super().__init__()
        self.from_batch = from_batch  # NaN only on batches larger than this (0: always)

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if len(x) > self.from_batch else out


class Constant(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 10)


class ConstantBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.bias.expand(len(x), 10)


def external(model, results):
    return api.evaluate(model, name="probe", dataset="synthetic", eval_attacks="natural,pgd20", eps=EPS,
                        test_subset=N, results=results, device="cpu")


@pytest.mark.parametrize("model,error,says", [
    (NaNNet(), UsageError, "returns non-finite logits (NaN or infinite) on 8 synthetic test inputs"),
    (Constant(), UsageError, "The model (Constant) has no parameters: there is nothing trained to evaluate"),
    (ConstantBias(), UsageError, "logits have no gradient path from its input"),
])
def test_an_external_nan_or_constant_model_is_refused_before_anything_is_written(results, model, error, says):
    before = tree(results)
    with pytest.raises(error) as err:
        external(model, results)
    assert says in str(err.value)
    assert tree(results) == before  # no run folder: `bench status` has nothing to call interrupted


def test_an_external_model_nan_beyond_the_first_inputs_is_refused_and_leaves_no_run(results):
    """NaN only on batches of more than 8 inputs: past the first check, refused by the model guards; the run
    folder that evaluation had created is removed again."""
    with pytest.raises(GuardFailure, match=r"returns 480 non-finite logits \(NaN or infinite\) on 48 test inputs"):
        external(NaNNet(from_batch=8), results)
    assert not any((results / "runs").glob("*"))
    status = invoke("status", "--results", str(results))
    assert "interrupted" not in status.output and "probe" not in status.output


def test_the_built_in_zero_gradient_guard_refuses_a_constant_model_with_a_sentence(batch):
    x, y = batch
    with pytest.raises(GuardFailure, match="no gradient path from its input"):
        check_zero_grad(ConstantBias().eval(), x, y)


@dataclass(frozen=True)
class NoParams:
    pass


def probe_method(name: str, loss) -> type[Method]:
    return type(name, (Method,), {"name": name, "summary": "a misbehaving loss", "Params": NoParams,
                                  "loss": lambda self, model, x, y, ctx: loss(model, x)})


@pytest.mark.parametrize("name,loss,says", [
    ("floatloss", lambda model, x: 1.0, "loss() returned a float, not a methods.base.StepOutput"),
    ("floatstep", lambda model, x: StepOutput(1.0), "loss() returned a StepOutput whose loss is a float, not a "
                                                     "scalar torch tensor"),
    ("vectorloss", lambda model, x: StepOutput(model(x).sum(1)), "whose loss is a tensor of shape (32,)"),
    ("itemloss", lambda model, x: StepOutput(torch.tensor(model(x).sum().item())), "does not depend on the model's "
                                                                                   "weights"),
])
def test_a_plugin_loss_of_the_wrong_type_gets_a_sentence(tmp_path, plugin, name, loss, says):
    plugin("methods", name, probe_method(name, loss))
    res = invoke(*RUN, "--methods", name, "--results", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output
    assert f"ModelOutputError: Method '{name}' (plugin module probe.py (--plugin)): " in res.output
    assert says in res.output
    assert "AttributeError" not in res.output and Store(tmp_path / "r").load_rows() == []


def test_a_model_factory_returning_a_string_gets_a_sentence(tmp_path, plugin):
    plugin("models", "stringy", lambda k, c, s: "not a model")
    res = invoke(*RUN, "--model", "stringy", "--results", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output
    assert ("UsageError: Model 'stringy' (plugin module probe.py (--plugin)): its factory returned a str, not a "
            "torch.nn.Module") in res.output and "AttributeError" not in res.output
    assert Store(tmp_path / "r").load_rows() == []


def test_non_finite_logits_in_training_are_named_in_the_failure(tmp_path, plugin):
    plugin("models", "nan-net", lambda k, c, s: NaNNet())
    res = invoke(*RUN, "--model", "nan-net", "--results", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output
    run_dir = next((tmp_path / "r" / "runs").iterdir())
    reason = json.loads((run_dir / FAILED).read_text())["reason"]
    assert reason == ("NonFiniteLoss: loss is nan at epoch 1, batch 1: the model's logits went non-finite (NaN or "
                      "infinite) first")
    assert not list(run_dir.glob("*.pt"))
