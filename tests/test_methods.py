"""Method oracles: weights computed by hand from the papers' formulas, reductions to AT, LRAT's invariants,
and every registered method x every training attack gives a finite loss whose gradient reaches every parameter."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from bench.config import TrainConfig
from bench.losses import ce_loss
from bench.names import UsageError
from bench.train_attacks import HAS_KAPPA, TRAIN_ATTACKS, build_train_attacks
from methods import METHODS, StepContext, build_method, build_method_reweighting_now
from methods.base import in_bn_mode, reweighting_started, run_attack
from methods.gairat import gairat_weights
from methods.lrat import lrat_coefficients, lrat_unnormalised
from methods.mail import mail_weights


def context(train_attack="pgd", epoch=0, epochs=1, steps=3):
    cfg = TrainConfig(method="at", train_attack=train_attack, eps=0.1, attack_steps=steps,
                      attack_step_size=0.025, saa_steps=3)
    return StepContext(attacks=build_train_attacks(cfg), attack_names=cfg.attack_names, epoch=epoch,
                       epochs=epochs, make_attack=lambda n: TRAIN_ATTACKS[n].build(cfg))


# ---- weight functions against hand computation ---------------------------------------------------------

def test_gairat_weights_by_hand():
    # K = 10 -> floor(K/2) = 5; lam = -1: w(kappa) = (1 + tanh(-1 + (5 - kappa)))/2
    raw = [(1 + math.tanh(-1 + 5.0)) / 2, (1 + math.tanh(-1 + 0.0)) / 2, (1 + math.tanh(-1 - 5.0)) / 2]
    expected = torch.tensor([3 * r / sum(raw) for r in raw])
    got = gairat_weights(torch.tensor([0, 5, 10]), num_steps=10, lam=-1.0)
    assert torch.allclose(got, expected, atol=1e-6)
    assert abs(got.mean().item() - 1.0) < 1e-6


def test_gairat_weights_odd_k_use_floor_half():
    # K = 7 -> floor(7/2) = 3: w(kappa) = (1 + tanh(0 + (3 - kappa) * 5 / 3))/2
    raw = [(1 + math.tanh((3 - k) * 5 / 3)) / 2 for k in (1, 4)]
    got = gairat_weights(torch.tensor([1, 4]), num_steps=7, lam=0.0)
    assert torch.allclose(got, torch.tensor([2 * r / sum(raw) for r in raw]), atol=1e-6)


def test_gairat_infinite_lambda_gives_ones():
    assert torch.equal(gairat_weights(torch.tensor([0, 3, 10]), 10, float("inf")), torch.ones(3))


def test_mail_weights_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    y = torch.tensor([0, 2])  # PM = 0.5 and 0.1 - 0.7 = -0.6
    sig = lambda v: 1 / (1 + math.exp(-v))
    expected = torch.tensor([3 * sig(10 * (-0.5 - 0.5)), 3 * sig(10 * (0.6 - 0.5))])
    assert torch.allclose(mail_weights(logits, y, slope=10, bias=-0.5), expected, atol=1e-6)


def test_lrat_coefficients_by_hand():
    # two variants; probabilities chosen so that t is exact: t = p_y - max_other
    p1 = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])  # t = 1.0, -0.3
    p2 = torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.1, 0.3]])  # t = 0.8,  0.3
    y = torch.tensor([0, 0])
    logits = [torch.log(p.clamp_min(1e-30)) for p in (p1, p2)]
    w = torch.tensor([[0.0, 2 * math.sqrt(0.2)], [2 * math.sqrt(1.3), 2 * math.sqrt(0.7)]])
    anchor = torch.tensor([max(0.0, 0.1 - w[0].sum().item()), 0.0])
    z = (anchor + w.sum(1)).mean()
    a, c = lrat_coefficients(logits, y, alpha=2, beta=0.5, C=0.1)
    assert torch.allclose(c, w / z, atol=1e-5) and torch.allclose(a, anchor / z, atol=1e-5)
    # a confident instance (all t = 1) keeps exactly C before the rescale: no pair is ever dropped
    a0, w0 = lrat_unnormalised([torch.log(p1.clamp_min(1e-30))] * 2, y, 2, 0.5, 0.1)
    assert torch.allclose(a0[0] + w0[0].sum(), torch.tensor(0.1))


def test_lrat_invariants_on_random_logits():
    torch.manual_seed(0)
    y = torch.randint(0, 10, (64,))
    logits = [torch.randn(64, 10, requires_grad=True) * s for s in (1.0, 5.0, 20.0)]
    anchor, w = lrat_unnormalised(logits, y, 2.0, 0.5, 0.1)
    assert (anchor + w.sum(1) >= 0.1 - 1e-6).all()  # every instance keeps total weight >= C
    a, c = lrat_coefficients(logits, y)
    assert torch.allclose((a + c.sum(1)).mean(), torch.tensor(1.0))  # Eq. 15: mean total is 1
    assert torch.allclose(c * (anchor + w.sum(1)).mean(), w, atol=1e-6)  # one shared scalar
    assert not a.requires_grad and not c.requires_grad  # weights carry no gradient


# ---- reductions: the reweighted methods reduce to AT where the papers say they do -------------------------

def loss_and_grads(method, model, x, y, ctx, seed=0):
    """On a fresh copy: a train-mode forward updates BN statistics, which the next attack would see."""
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    model.train()
    model.zero_grad()
    loss = method.loss(model, x, y, ctx).backward()
    return loss, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("method,params", [
    ("gairat", {"lam": float("inf"), "burn_in": 0.0}),
    ("lsat", {}),
    ("mail", {"burn_in": 1.0}),  # still in burn-in: plain AT
])
def test_reduces_to_at_bit_for_bit(method, params, tiny_model, batch):
    x, y = batch
    ctx = context("pgd")
    at_loss, at_grads = loss_and_grads(build_method("at"), tiny_model, x, y, ctx)
    loss, grads = loss_and_grads(build_method(method, params), tiny_model, x, y, ctx)
    assert torch.equal(loss, at_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, at_grads))


def test_lrat_with_unit_weights_reduces_to_lsat(tiny_model, batch):
    x, y = batch
    ctx = context("saa+cw")
    lsat_loss, _ = loss_and_grads(build_method("lsat"), tiny_model, x, y, ctx)
    # alpha = 1, beta = 0 -> w = (1 - t)^0 = 1 for every variant; C < 1 -> the anchor term vanishes
    loss, _ = loss_and_grads(build_method("lrat", {"alpha": 1.0, "beta": 0.0, "C": 0.5}), tiny_model, x, y, ctx)
    assert torch.allclose(loss, lsat_loss, rtol=0, atol=1e-7)


def test_gairat_reweights_after_burn_in(tiny_model, batch):
    x, y = batch
    ctx = context("pgd", epoch=1, epochs=2)
    torch.manual_seed(0)
    out = build_method("gairat", {"burn_in": 0.5}).loss(tiny_model.train(), x, y, ctx)
    assert out.weights is not None and abs(out.weights.mean().item() - 1) < 1e-5
    assert build_method("gairat").loss(tiny_model, x, y, context("pgd", epoch=0, epochs=2)).weights is None


def test_burn_in_schedule():
    assert [reweighting_started(e, 120, 0.5) for e in (59, 60)] == [False, True]  # GAIRAT: from epoch 60
    assert [reweighting_started(e, 120, 0.625) for e in (74, 75)] == [False, True]  # MAIL: from epoch 75
    # bench speed and the registry-wide tests use the methods without burn-in: read from each Params
    assert [build_method_reweighting_now(m).params.burn_in for m in ("gairat", "irat", "mail")] == [0.0] * 3
    assert build_method_reweighting_now("lrat").params == build_method("lrat").params


# ---- every registered method x every training attack ----------------------------------------------------

@pytest.mark.parametrize("attack", sorted(TRAIN_ATTACKS))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_and_attack_trains(name, attack, tiny_model, batch):
    method = build_method_reweighting_now(name)
    if method.needs_kappa and not HAS_KAPPA[attack]:
        with pytest.raises(UsageError, match="kappa"):
            method.check_attacks((attack,), HAS_KAPPA)
        return
    method.check_attacks((attack,), HAS_KAPPA)
    x, y = batch
    torch.manual_seed(0)
    tiny_model.train()
    loss = method.loss(tiny_model, x, y, context(attack)).backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    for pname, p in tiny_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert tiny_model.training  # the loss is computed in train mode


def test_multi_attack_only_for_local_methods():
    for name in ("at", "gairat", "mail"):
        with pytest.raises(UsageError, match="one training attack"):
            build_method(name).check_attacks(("saa", "cw"), HAS_KAPPA)
    build_method("lrat").check_attacks(("saa", "cw"), HAS_KAPPA)


def test_attack_runs_in_eval_mode_and_loss_in_train_mode(tiny_model, batch):
    seen = []
    attack = lambda model, x, y: seen.append(model.training) or type("R", (), {"x_adv": x})()
    run_attack(tiny_model.train(), attack, *batch, bn_mode="eval")
    assert seen == [False] and tiny_model.training


def test_attacks_run_with_frozen_weights_and_accumulate_no_weight_gradient(tiny_model, batch):
    """The issue's GPU path: input gradients only. Inside the attack no weight requires grad; afterwards all do
    again, and a real PGD attack has left every .grad empty."""
    seen = []
    spy = lambda model, x, y: seen.append([p.requires_grad for p in model.parameters()]) or type("R", (), {"x_adv": x})()
    run_attack(tiny_model.train(), spy, *batch, bn_mode="eval")
    assert seen and not any(seen[0]) and all(p.requires_grad for p in tiny_model.parameters())
    run_attack(tiny_model, context("pgd").attacks[0], *batch, bn_mode="eval")
    assert all(p.grad is None for p in tiny_model.parameters())


def test_method_params_are_validated():
    with pytest.raises(UsageError, match="Did you mean: lam"):
        build_method("gairat", {"lamb": "0"})
    with pytest.raises(UsageError, match="anchor"):
        build_method("lrat", {"anchor": "natual"})
    assert build_method("irat", {"lam": "0"}).params.lam == 0.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the GPU path (mask copied to pinned memory, event) needs a GPU"))])
def test_lrat_anchor_covers_only_the_needing_instances_in_the_attack_bn_mode(tiny_model, batch, device):
    """Oracle: the loss by hand, with the anchor CE on the natural inputs of the instances whose weights sum
    below C, in eval BN mode, as one graph; the deferred anchor term (its own backward after the main one)
    gives the same loss and gradients, and BN running statistics move with the adversarial pass only."""
    x, y = (t.to(device) for t in batch)
    ctx = context("pgd")
    params = {"alpha": 1.0, "beta": 1.0, "C": 1.3}  # w = 1 - t: the anchor is needed where t > -0.3
    model, ref = copy.deepcopy(tiny_model).to(device).train(), copy.deepcopy(tiny_model).to(device).train()
    torch.manual_seed(0)
    out = build_method("lrat", params).loss(model, x, y, ctx)
    assert out.deferred is not None
    loss = out.backward()
    torch.manual_seed(0)
    x_adv = run_attack(ref, ctx.attacks[0], x, y, "eval").x_adv
    logits = ref(x_adv)
    anchor, coefs = lrat_coefficients([logits], y, **params)
    need = anchor > 0
    k = int(need.sum())
    assert k > 0
    if device == "cpu":  # CUDA draws other dropout masks and PGD starts: the CPU pins the case down exactly
        assert k < len(y) and k & (k - 1)  # some need the anchor, not all, padded to a power of two
    with in_bn_mode(ref, "eval"):
        natural_ce = ce_loss(ref(x), y)
    expected = (coefs[:, 0] * ce_loss(logits, y) + torch.where(need, anchor * natural_ce, 0.0)).mean()
    expected.backward()
    assert torch.allclose(loss, expected.detach(), rtol=0, atol=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.bn.running_mean, ref.bn.running_mean) and model.training


def test_lrat_without_a_needing_instance_has_no_anchor_term(tiny_model, batch):
    """At the defaults an untrained model's t is far below 0.9975: the deferred term adds nothing, so the step
    is the weighted CE alone (and LSAT's is AT's, checked bit for bit above)."""
    torch.manual_seed(0)
    out = build_method("lrat").loss(tiny_model.train(), *batch, context("pgd"))
    assert float(out.stats["anchor_share"]) == 0.0 and out.deferred() is None
