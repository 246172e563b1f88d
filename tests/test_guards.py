"""Each guard fires on a deliberately broken model or input and stays quiet on a correct one; the suite
guards against hand-computed oracles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from support import TinyNet

from bench.evaluation.attacks import EVAL_ATTACKS, WHITE_BOX, run_eval_attack
from bench.config.catalog import default_eps
from bench.evaluation.guards import (ALL_GUARDS, GuardFailure, GuardResult, check_autoattack, check_deterministic, check_eps,
                          check_eval_mode, check_input_range, check_logits, check_model, check_monotone,
                          check_square, check_zero_grad, columns, merge_columns, monotone_tolerance)
from bench.config.names import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

STRENGTH = {a: info.strength for a, info in EVAL_ATTACKS.items()}


@pytest.fixture
def good(tiny_model):
    return tiny_model.eval()


class Softmaxed(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


class AlwaysDropout(nn.Module):
    """Eval mode everywhere, yet random: dropout hard-wired on (a bug that flags cannot see)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return nn.functional.dropout(self.inner(x), 0.5, training=True)


class Quantised(nn.Module):
    """Rounds its input first: zero input gradient everywhere (gradient masking)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_train_mode_bn_is_refused_and_eval_mode_passes(tiny_model):
    tiny_model.train()
    with pytest.raises(GuardFailure, match=r"bn \(BatchNorm2d\).*drop \(Dropout\)"):
        check_eval_mode(tiny_model)
    tiny_model.eval()
    tiny_model.bn.train()  # one forgotten module is enough
    with pytest.raises(GuardFailure, match=r"bn \(BatchNorm2d\)"):
        check_eval_mode(tiny_model)
    tiny_model.eval()
    assert check_eval_mode(tiny_model) == GuardResult("eval_mode", "ok")


def test_softmax_output_is_flagged_logits_and_log_probabilities_are_not(good, batch):
    x, _ = batch
    assert check_logits(Softmaxed(good).eval(), x).status == "flag"
    assert check_logits(good, x).status == "ok"
    log_probs = nn.Sequential(good, nn.LogSoftmax(1)).eval()
    assert check_logits(log_probs, x).status == "ok"


def test_eps_eight_is_refused_with_the_fix(good):
    with pytest.raises(UsageError, match=r"Did you mean 8/255"):
        check_eps(8.0, "linf")
    assert check_eps(8 / 255, "linf").status == "ok"
    assert check_eps(0.0, "linf").status == "ok"
    assert check_eps(0.5, "linf").status == "flag"  # possible, but larger than any standard budget
    for bad in (-0.1, float("nan")):
        with pytest.raises(UsageError):
            check_eps(bad, "linf")
    # L2 on 28x28: sqrt(d) = 28 is the cube's diameter; 0.1 sqrt(d) = 2.8 the "suspicious" line
    assert check_eps(1.5, "l2", 784).status == "ok"
    assert check_eps(8.0, "l2", 784).status == "flag"
    with pytest.raises(UsageError, match="diameter"):
        check_eps(28.5, "l2", 784)


def test_eps_eight_is_refused_by_the_attack_before_any_work(good, batch):
    x, y = batch
    with pytest.raises(UsageError):
        run_eval_attack(good, x, y, "pgd20", eps=8.0)


def test_inputs_outside_unit_range_are_refused(batch):
    x, _ = batch
    with pytest.raises(GuardFailure, match="outside"):
        check_input_range((x - 0.5) / 0.25)  # mean/std normalisation done outside the model
    assert check_input_range(x).status == "ok"


def test_randomised_forward_is_flagged(good, batch):
    x, _ = batch
    assert check_deterministic(AlwaysDropout(good).eval(), x).status == "flag"
    assert check_deterministic(good, x).status == "ok"


def test_zero_input_gradient_is_flagged(good, batch):
    x, y = batch
    result = check_zero_grad(Quantised(good).eval(), x, y)
    assert result.status == "flag" and result.detail.startswith("32 of 32")
    assert check_zero_grad(good, x, y).status == "ok"


def test_check_model_is_quiet_on_a_correct_model(good, batch):
    x, y = batch
    results = check_model(good, x, y, 8 / 255, "linf")
    assert {r.name for r in results} == {"eval_mode", "input_range", "eps", "outputs", "deterministic", "logits",
                                         "zero_grad"}
    assert all(r.status == "ok" for r in results)
    assert columns(results)["guards_flagged"] == ""


def test_autoattack_own_checks_are_surfaced(good, batch):
    x, y = batch
    broken = run_eval_attack(Softmaxed(good).eval(), x[:4], y[:4], "apgd-ce", eps=8 / 255)
    assert any("probability distribution" in w for w in broken.warnings)
    assert check_autoattack(broken.warnings, True).status == "flag"
    clean = run_eval_attack(good, x[:4], y[:4], "apgd-ce", eps=8 / 255)
    assert clean.warnings == [] and check_autoattack(clean.warnings, True).status == "ok"
    assert check_autoattack([], False).status == "skip"


def flags(n: int, robust: int) -> list[bool]:
    return [i < robust for i in range(n)]


def test_monotone_tolerance_oracle():
    assert monotone_tolerance(0.4, 0.6, 100) == pytest.approx(2 * math.sqrt(0.25 / 100))  # 0.1
    assert monotone_tolerance(0.4, 0.45, 100) == pytest.approx(2 * math.sqrt(0.425 * 0.575 / 100))  # 0.0989
    assert monotone_tolerance(0.0, 0.001, 1000) == pytest.approx(2 * math.sqrt(0.0005 * 0.9995 / 1000))
    assert monotone_tolerance(0.0, 0.0, 50) == pytest.approx(1 / 50)  # the one-point floor


def test_monotone_flags_pgd_above_fgsm_beyond_noise_only():
    base = {"natural": flags(100, 80), "fgsm": flags(100, 40)}
    bad = check_monotone({**base, "pgd20": flags(100, 60)}, STRENGTH)  # +0.20 > tol 0.10
    assert bad.status == "flag" and "pgd20 0.600 > fgsm 0.400" in bad.detail
    assert check_monotone({**base, "pgd20": flags(100, 45)}, STRENGTH).status == "ok"  # +0.05 < 0.099
    assert check_monotone({**base, "pgd20": flags(100, 30), "aa": flags(100, 25)}, STRENGTH).status == "ok"
    assert check_monotone({**base, "pgd20": flags(100, 30), "aa": flags(100, 90)}, STRENGTH).status == "flag"
    assert check_monotone({"pgd20": flags(100, 30), "cw20": flags(100, 90)}, STRENGTH).status == "skip"


def test_square_beating_white_box_is_flagged():
    n = 100
    apgd = flags(n, 50)
    square_same = flags(n, 50)
    square_more = flags(n, 49)  # breaks point 49, which APGD-CE left robust: 1% > AutoAttack's 0.2%
    assert check_square({"apgd-ce": apgd, "square": square_same}, WHITE_BOX).status == "ok"
    result = check_square({"apgd-ce": apgd, "square": square_more}, WHITE_BOX)
    assert result.status == "flag" and "broke 1 of 100" in result.detail
    # a point some white-box attack already broke does not count
    assert check_square({"apgd-ce": apgd, "apgd-t": flags(n, 49), "square": square_more}, WHITE_BOX).status == "ok"
    # Square beating FGSM or PGD-20 alone is expected of a 5000-query attack: not compared
    assert check_square({"pgd20": apgd, "square": square_more}, WHITE_BOX).status == "skip"
    aa_note = ["Square Attack has decreased the robust accuracy of 1.00%. This might indicate ..."]
    assert check_square({"natural": apgd}, WHITE_BOX, aa_note).status == "flag"
    assert check_square({"natural": apgd}, WHITE_BOX).status == "skip"


def test_columns_and_merge_keep_every_flag():
    a = columns([GuardResult("logits", "flag", "probabilities"), GuardResult("eps", "ok")])
    b = columns([GuardResult("logits", "ok"), GuardResult("eps", "skip", "n/a")])
    assert a == {"guard_logits": "flag: probabilities", "guard_eps": "ok", "guards_flagged": "logits"}
    merged = merge_columns([b, a])
    assert merged["guard_logits"] == "flag: probabilities" and merged["guard_eps"] == "ok"
    assert merged["guards_flagged"] == "logits"
    assert set(ALL_GUARDS) >= {"eval_mode", "logits", "eps", "monotone", "square", "autoattack"}


def test_default_eps():
    assert default_eps("cifar10", "linf") == 8 / 255 and default_eps("svhn", "l2") == 0.5
    assert default_eps("fashion-mnist", "linf") == 0.1 and default_eps("mnist", "l2") == 1.5
    with pytest.raises(UsageError):
        default_eps("cifar10", "l1")


def test_train_mode_tiny_net_is_refused_by_check_model(batch):
    model = TinyNet().train()
    x, y = batch
    with pytest.raises(GuardFailure):
        check_model(model, x, y, 0.1, "linf")
    assert model.training  # refused, not silently switched


def guard_outcome(fn) -> str:
    """The guard's verdict as a row would show it, or the refusal."""
    try:
        results = fn()
    except (GuardFailure, UsageError) as exc:
        return f"refused ({type(exc).__name__})"
    return ", ".join(r.value.split(":")[0] for r in (results if isinstance(results, list) else [results]))


def test_guard_table_fires_on_broken_and_is_quiet_on_good(tiny_model, batch):
    """The closing table: `pytest -q -s tests/test_guards.py -k table` prints it."""
    x, y = batch
    good = tiny_model.eval()
    cases = [  # guard, what is broken, on the broken model, on the good one
        ("eval_mode", "TinyNet in train mode (BN, dropout)", lambda: check_eval_mode(TinyNet().train()),
         lambda: check_eval_mode(good)),
        ("logits", "softmax on top of the logits", lambda: check_logits(Softmaxed(good).eval(), x),
         lambda: check_logits(good, x)),
        ("eps", "L-inf eps = 8 (not 8/255)", lambda: check_eps(8.0, "linf"), lambda: check_eps(8 / 255, "linf")),
        ("input_range", "inputs normalised outside the model", lambda: check_input_range((x - 0.5) / 0.25),
         lambda: check_input_range(x)),
        ("deterministic", "dropout hard-wired on in eval mode",
         lambda: check_deterministic(AlwaysDropout(good).eval(), x), lambda: check_deterministic(good, x)),
        ("zero_grad", "input rounded to 1/4 (no gradient)", lambda: check_zero_grad(Quantised(good).eval(), x, y),
         lambda: check_zero_grad(good, x, y)),
        ("autoattack", "softmax on top, APGD-CE run", lambda: check_autoattack(
            run_eval_attack(Softmaxed(good).eval(), x[:4], y[:4], "apgd-ce", eps=8 / 255).warnings, True),
         lambda: check_autoattack(run_eval_attack(good, x[:4], y[:4], "apgd-ce", eps=8 / 255).warnings, True)),
    ]
    lines = ["| guard | broken | on the broken model | on the good model |", "|---|---|---|---|"]
    for name, what, broken, ok in cases:
        fired, quiet = guard_outcome(broken), guard_outcome(ok)
        assert fired.startswith(("flag", "refused")) and quiet == "ok", name
        lines.append(f"| {name} | {what} | {fired} | {quiet} |")
    print("\n" + "\n".join(lines))
