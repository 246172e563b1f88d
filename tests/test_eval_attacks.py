"""Eval attacks: eps = 0 and identity oracles, a scripted model any perturbation breaks, agreement with
independent implementations (foolbox's PGD, pyautoattack called directly), AutoAttack resume, isolation."""
from __future__ import annotations

import dataclasses
import logging

import foolbox as fb
import pytest
import torch
import torch.nn as nn
from support import Fragile, TinyNet
from pyautoattack import AutoAttack

from bench.attacks.pgd import AttackResult
from bench.evaluation.attacks import (AA_COMPONENTS, EVAL_ATTACKS, PGD_NAMES, _natural, _run_autoattack, build_pgd,
                                run_attack_flags, run_eval_attack)
from bench.evaluation.guards import GuardFailure

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def points():
    """TinyNet (eval mode) and 32 points: labels = its predictions, except 4 flipped (natural acc 28/32)."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return model, x, y


@pytest.mark.parametrize("threat_model", ["linf", "l2"])
@pytest.mark.parametrize("name", PGD_NAMES)
def test_eps_zero_gives_natural_pgd_family(points, name, threat_model):
    model, x, y = points
    natural = _natural(model, x, y, 256)
    out = run_eval_attack(model, x, y, name, eps=0.0, threat_model=threat_model)
    assert natural.sum() == 28
    assert torch.equal(out.flags, natural)


def test_eps_zero_gives_natural_autoattack(linear):
    """At eps = 0 no component can break a point, so `aa` runs every one of them (APGD-CE, APGD-T, FAB-T,
    Square) on every correctly classified point: one run covers each component at eps = 0."""
    model, x, y = linear
    x, y = x[:3], y[:3].clone()
    y[0] = (y[0] + 1) % 10  # natural = 011
    out = run_eval_attack(model, x, y, "aa", eps=0.0, batch_size=2)
    assert out.flags.tolist() == [False, True, True]


def test_identity_attack_gives_natural(points):
    model, x, y = points
    identity = lambda m, xb, yb: AttackResult(xb.clone(), None)  # noqa: E731
    assert torch.equal(run_attack_flags(model, x, y, identity, batch_size=5), _natural(model, x, y, 256))
    zero_steps = dataclasses.replace(build_pgd("pgd20", 0.1, "linf"), steps=0, random_start=False)
    assert torch.equal(run_attack_flags(model, x, y, zero_steps), _natural(model, x, y, 256))


@pytest.mark.parametrize("threat_model,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_fragile_model_is_broken_by_every_attack(points, threat_model, eps):
    _, x, y = points
    model = Fragile(x, y).eval()
    assert run_eval_attack(model, x, y, "natural", eps=eps).flags.all()
    for name in PGD_NAMES + ("apgd-ce", "aa"):
        out = run_eval_attack(model, x[:6], y[:6], name, eps=eps, threat_model=threat_model)
        assert out.flags.sum() == 0, name


@pytest.mark.parametrize("threat_model,eps", [("linf", 0.003), ("l2", 0.1)])
def test_pgd20_agrees_with_foolbox(points, threat_model, eps):
    """Same model, points, 20 steps of eps/4, no random start on both sides (foolbox 3.3.4's LinfPGD/L2PGD)."""
    model, x, y = points
    ours = dataclasses.replace(build_pgd("pgd20", eps, threat_model), random_start=False)
    robust_ours = run_attack_flags(model, x, y, ours).float().mean().item()
    cls = fb.attacks.LinfPGD if threat_model == "linf" else fb.attacks.L2PGD
    attack = cls(abs_stepsize=eps / 4, steps=20, random_start=False)
    _, _, success = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    robust_fb = (~success).float().mean().item()
    assert 0.2 < robust_fb < 0.8  # an informative regime, not all-or-nothing
    assert abs(robust_ours - robust_fb) <= 1 / 32


def test_aa_equals_pyautoattack_called_directly(linear):
    model, x, y = linear
    eps = 0.12
    ours = run_eval_attack(model, x, y, "aa", eps=eps, seed=3, batch_size=3).flags
    _, y_adv = AutoAttack(model, eps=eps, norm="Linf", seed=3, version="standard").run_standard_evaluation(
        x, y, batch_size=3)
    assert torch.equal(ours, (y_adv == y).cpu())
    assert 0 < ours.sum() < 8


class Interrupt(nn.Module):
    """Counts forward passes; raises after `after` of them (a stand-in for a killed process)."""

    def __init__(self, model: nn.Module, after: int | None = None):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt
        return self.model(x)


def test_autoattack_resumes_where_it_stopped(linear, tmp_path):
    model, x, y = linear
    args = (x, y, ("apgd-ce", "apgd-t"), 0.12, "linf", 0, 2)
    log = logging.getLogger("test")
    full = Interrupt(model).eval()
    expected, _, seconds = _run_autoattack(full, *args, None, log)
    assert set(seconds) == {"apgd-ce", "apgd-t"} and all(v >= 0 for v in seconds.values())
    state = tmp_path / "aa.state"
    with pytest.raises(KeyboardInterrupt):
        _run_autoattack(Interrupt(model, after=full.calls * 2 // 3).eval(), *args, state, log)
    assert state.exists()
    rest = Interrupt(model).eval()
    flags, resumed, resumed_seconds = _run_autoattack(rest, *args, state, log)
    assert resumed and torch.equal(flags, expected)
    assert set(resumed_seconds) == {"apgd-ce", "apgd-t"}  # the interrupted attempt's seconds are kept
    assert 0 < expected.sum() < len(y)
    assert rest.calls < full.calls * 2 // 3  # it continued; it did not start over
    other = (x, y, ("apgd-ce", "apgd-t"), 0.13, "linf", 0, 2)  # another eps: the state is stale, not used
    assert _run_autoattack(model, *other, state, log)[1] is False


def test_train_mode_is_refused_not_switched(points):
    model, x, y = points
    model.train()
    with pytest.raises(GuardFailure, match="train mode"):
        run_eval_attack(model, x, y, "pgd20", eps=0.01)
    assert model.training and model.bn.training


def test_caller_rng_and_tf32_flags_are_untouched(points):
    model, x, y = points
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        out = run_eval_attack(model, x, y, "apgd-ce", eps=0.004)
        assert torch.equal(torch.rand(3), expected)
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert {k: out.info[k] for k in ("eval_precision", "eval_tf32")} == {"eval_precision": "fp32", "eval_tf32": False}
        assert out.info["aa_component_seconds"].startswith("apgd-ce=")  # where AutoAttack's time went
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def test_every_eval_attack_has_a_strength_and_summary():
    assert set(EVAL_ATTACKS) == {"natural", "aa", *PGD_NAMES, *AA_COMPONENTS}
    assert EVAL_ATTACKS["natural"].strength < EVAL_ATTACKS["fgsm"].strength < EVAL_ATTACKS["pgd20"].strength \
        < EVAL_ATTACKS["aa"].strength


@pytest.mark.parametrize("name", sorted(EVAL_ATTACKS))
def test_every_eval_attack_keeps_the_evaluation_contract(points, name):
    """Registry-wide (a new eval attack is checked the moment it is registered): one flag per point, never
    robust where the clean prediction is wrong, the same flags on a second call with the same seed, and the
    model left as it was given (eval mode, weights untouched)."""
    model, x, y = points
    x, y = x[:8], y[:8]  # 4 points the model gets wrong (flipped labels), 4 it gets right
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = run_eval_attack(model, x, y, name, eps=0.01, seed=3)
    again = run_eval_attack(model, x, y, name, eps=0.01, seed=3)
    natural = run_eval_attack(model, x, y, "natural", eps=0.01)
    flags, repeat, clean = (torch.as_tensor(o.flags, dtype=torch.bool) for o in (first, again, natural))
    assert flags.shape == (8,) and torch.equal(flags, repeat)
    assert not (flags & ~clean).any()
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
