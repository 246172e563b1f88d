"""Method oracles: weights computed by hand from the papers' formulas, reductions to AT, LRAT's invariants,
and every registered method x every training attack gives a finite loss whose gradient reaches every parameter."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from bench.attacks.losses import ce_loss
from bench.config.names import UsageError
from bench.attacks.training import TRAIN_ATTACKS
from methods import METHODS, StepContext, build_method, build_method_reweighting_now
from methods.base import first_reweighted_epoch, in_bn_mode, reweighting_started, run_attack
from methods.gairat import gairat_weights
from methods.lrat import lrat_coefficients, lrat_unnormalised
from methods.mail import mail_weights
from support import context


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


def test_gairat_refuses_fewer_than_two_steps():
    # floor(1/2) = 0: the weights would divide by zero (NaN); refused by the function and at config time
    with pytest.raises(ValueError, match="at least 2 attack steps"):
        gairat_weights(torch.tensor([0, 1]), num_steps=1, lam=-1.0)
    with pytest.raises(UsageError, match="Method 'gairat' needs at least 2 attack steps"):
        build_method("gairat").check_attacks(("pgd",), attack_steps=1)
    assert torch.isfinite(gairat_weights(torch.tensor([0, 1, 2]), num_steps=2, lam=-1.0)).all()
    build_method("gairat").check_attacks(("pgd",), attack_steps=2)
    build_method("at").check_attacks(("pgd",), attack_steps=1)  # only GAIRAT needs two


def test_mail_weights_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    y = torch.tensor([0, 2])  # PM = 0.5 and 0.1 - 0.7 = -0.6
    sig = lambda v: 1 / (1 + math.exp(-v))
    expected = torch.tensor([3 * sig(10 * (-0.5 - 0.5)), 3 * sig(10 * (0.6 - 0.5))])
    assert torch.allclose(mail_weights(logits, y, slope=10, bias=-0.5), expected, atol=1e-6)


def test_mail_defaults_are_the_official_train_py_ones():
    # PM = 0 (two classes tie): 3 sigmoid(1.0 * (0 - 1.5)) = 0.547277 (train.py --slope 1.0 --bias -1.5);
    # the old slope 10, bias -0.5 gave 3 sigmoid(-5) = 0.020079
    logits, y = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0])
    assert mail_weights(logits, y).item() == pytest.approx(0.547277, abs=1e-6)
    assert mail_weights(logits, y, slope=10.0, bias=-0.5).item() == pytest.approx(0.020079, abs=1e-6)
    params = build_method("mail").params
    assert (params.slope, params.bias) == (1.0, -1.5)
    old = build_method("mail", {"slope": "10", "bias": "-0.5"}).params  # as --method-param gives them
    assert (old.slope, old.bias) == (10.0, -0.5)


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


def test_burn_in_rule_by_hand():
    """first reweighted 0-based epoch = burn_in * epochs rounded to nearest, halves up; defaults 59/120 (GAIRAT)
    and 76/120 (MAIL)."""
    gairat, mail = build_method("gairat").params.burn_in, build_method("mail").params.burn_in
    assert (gairat, mail) == (59 / 120, 76 / 120)
    assert [first_reweighted_epoch(e, gairat) for e in (120, 100, 12, 8)] == [59, 49, 6, 4]  # 59, 49.2, 5.9, 3.9
    assert [first_reweighted_epoch(e, mail) for e in (120, 100, 12, 8)] == [76, 63, 8, 5]  # 76, 63.3, 7.6, 5.1
    assert first_reweighted_epoch(3, 0.5) == 2 and first_reweighted_epoch(12, 0.625) == 8  # 1.5 and 7.5 round up
    assert first_reweighted_epoch(25, 0.58) == 15  # 0.58 * 25 = 14.499999999999998 in floats: still a half
    for epochs in (1, 8, 12, 100, 120):
        assert first_reweighted_epoch(epochs, 0.0) == 0 and reweighting_started(0, epochs, 0.0)  # from epoch 0
        assert first_reweighted_epoch(epochs, 1.0) == epochs and not reweighting_started(epochs - 1, epochs, 1.0)
    assert [reweighting_started(e, 120, gairat) for e in (58, 59)] == [False, True]
    # bench speed and the registry-wide tests use the methods without burn-in: read from each Params
    assert [build_method_reweighting_now(m).params.burn_in for m in ("gairat", "irat", "mail")] == [0.0] * 3
    assert build_method_reweighting_now("lrat").params == build_method("lrat").params


def official_gairat(epoch: int, kappa, steps: int, Lambda: float = -1.0, begin_epoch: int = 60, epochs: int = 120):
    """GAIRAT.py's weights at 0-based `epoch` (None: its plain CE branch), transcribed: the main loop calls
    `adjust_Lambda(epoch + 1)`, whose `fixed` schedule (args.epochs >= 110) keeps `Lambda = args.Lambda_max`
    (+inf) unless `epoch >= 60` on that 1-based count; train() reweights `if (epoch + 1) >= args.begin_epoch`."""
    assert epochs >= 110
    lam = Lambda if epoch + 1 >= 60 else float("inf")
    return gairat_weights(kappa, steps, lam) if (epoch + 1) >= begin_epoch else None


def test_gairat_schedule_matches_the_official_code_at_120_epochs():
    kappa, logits, y = torch.tensor([0, 2, 5, 7, 10]), torch.zeros(5, 10), torch.zeros(5, dtype=torch.long)
    adv, attack, method = SimpleNamespace(kappa=kappa), SimpleNamespace(steps=10), build_method("gairat")
    first = None
    for epoch in range(120):
        ours = method.weights(logits, y, adv, attack, StepContext((), ("pgd",), epoch, 120))
        theirs = official_gairat(epoch, kappa, 10)
        assert (ours is None) == (theirs is None), epoch
        if ours is not None:
            assert torch.equal(ours, theirs) and not torch.equal(ours, torch.ones(5))  # lam = -1, not +inf
            first = epoch if first is None else first
    assert first == 59


def test_mail_schedule_matches_the_official_code_at_120_epochs():
    """MAIL train.py: `if 'mail' not in args.method or epoch <= 75:` plain AT (at_loss), else mail_loss."""
    logits, y = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0])
    method = build_method("mail")
    reweighted = [epoch for epoch in range(120)
                  if method.weights(logits, y, None, None, StepContext((), ("pgd",), epoch, 120)) is not None]
    assert reweighted == [epoch for epoch in range(120) if not epoch <= 75]  # 76 .. 119


# ---- every registered method x every training attack ----------------------------------------------------

@pytest.mark.parametrize("attack", sorted(TRAIN_ATTACKS))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_and_attack_trains(name, attack, tiny_model, batch):
    method = build_method_reweighting_now(name)
    if method.entry().train_attacks and attack not in method.entry().train_attacks:
        with pytest.raises(UsageError, match=f"trains on its own attack {method.entry().train_attacks[0]}"):
            method.check_attacks((attack,))
        return
    if method.entry().needs_kappa and not TRAIN_ATTACKS[attack].has_kappa:
        with pytest.raises(UsageError, match="kappa"):
            method.check_attacks((attack,))
        return
    method.check_attacks((attack,))
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
            build_method(name).check_attacks(("saa", "cw"))
    build_method("lrat").check_attacks(("saa", "cw"))


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
def test_lrat_anchor_covers_only_the_needing_instances_in_eval_mode(tiny_model, batch, device):
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


def _spy_coefficients(monkeypatch):
    """Record what LRAT's loss got from lrat_coefficients: (anchor_coef, variant_coefs) per call."""
    import methods.lrat as lrat_module

    seen = []

    def spy(*args, **kwargs):
        out = lrat_coefficients(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(lrat_module, "lrat_coefficients", spy)
    return seen


def _bn_calls(model):
    """Forward hook on the model's BatchNorm: (training, batch size) of every call."""
    calls = []
    model.bn.register_forward_hook(lambda m, inp, out: calls.append((m.training, inp[0].shape[0])))
    return calls


def _bn_state(model):
    return [t.clone() for t in (model.bn.running_mean, model.bn.running_var, model.bn.num_batches_tracked)]


@pytest.mark.parametrize("attack_bn_mode", ["train", "eval"])
def test_lrat_anchor_pass_never_runs_train_mode_bn_on_a_subset(tiny_model, batch, attack_bn_mode, monkeypatch):
    """anchor_bn=eval (the default), whatever attack_bn_mode: the anchor pass sees only the needing instances
    (padded to a power of two), with BN in eval mode, and leaves BN's running statistics untouched; its term
    is sum_i anchor_i CE_eval(x_i) / n."""
    x, y = batch
    seen = _spy_coefficients(monkeypatch)
    params = {"alpha": 1.0, "beta": 1.0, "C": 1.3}  # w = 1 - t: the anchor is needed where t > -0.3
    model = tiny_model.train()
    torch.manual_seed(0)
    out = build_method("lrat", params).loss(model, x, y, context("pgd", bn_mode=attack_bn_mode))
    out.loss.backward()
    (anchor, _), = seen
    k = int((anchor > 0).sum())
    assert 0 < k < len(y)
    before, calls = _bn_state(model), _bn_calls(model)
    term = out.deferred()
    assert calls == [(False, 1 << (k - 1).bit_length())]  # one eval-mode pass over the padded subset
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(model))) and model.training
    model.eval()
    with torch.no_grad():
        expected = (anchor * ce_loss(model(x), y)).sum() / len(y)
    assert torch.allclose(term.detach(), expected, rtol=1e-5, atol=1e-7)


def test_lrat_anchor_bn_batch_runs_the_whole_batch_in_train_mode(tiny_model, batch, monkeypatch):
    """anchor_bn=batch: one train-mode pass over all n inputs (batch statistics of the whole batch; the running
    ones move once, as in any train-mode forward); instances that do not need the anchor get coefficient 0."""
    x, y = batch
    seen = _spy_coefficients(monkeypatch)
    model = tiny_model.train()
    torch.manual_seed(0)
    method = build_method("lrat", {"alpha": 1.0, "beta": 1.0, "C": 1.3, "anchor_bn": "batch"})
    assert method.params.anchor_bn == "batch" and build_method("lrat").params.anchor_bn == "eval"
    out = method.loss(model, x, y, context("pgd", bn_mode="train"))
    out.loss.backward()
    (anchor, _), = seen
    assert 0 < int((anchor > 0).sum()) < len(y)
    tracked, calls = int(model.bn.num_batches_tracked), _bn_calls(model)
    term = out.deferred()
    assert term is not None and calls == [(True, len(y))] and model.training
    assert int(model.bn.num_batches_tracked) == tracked + 1
    with pytest.raises(UsageError, match="anchor_bn"):
        build_method("lrat", {"anchor_bn": "subset"})


# ---- relative weights: every reweighting method, on one scale (1 = the batch mean) ---------------------------

def test_relative_weights_mail_and_gairat(tiny_model, batch):
    x, y = batch
    for name in ("mail", "gairat"):
        torch.manual_seed(0)
        out = build_method_reweighting_now(name).loss(tiny_model.train(), x, y, context("pgd"))
        w, rel = out.weights, out.relative_weights
        assert rel.shape == (len(y),) and rel.mean().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(rel, w / w.mean())
        if name == "gairat":
            assert torch.allclose(rel, w, atol=1e-6)  # GAIRAT's weights are batch-normalised already
        else:
            assert abs(w.mean().item() - 1.0) > 1e-3  # MAIL's raw weights are not: relative != raw
    torch.manual_seed(0)
    assert build_method("at").loss(tiny_model, x, y, context("pgd")).relative_weights is None


@pytest.mark.parametrize("params", [{}, {"alpha": 1.0, "beta": 1.0, "C": 2.5}])  # 2.5: some need the anchor
def test_relative_weights_lrat_are_the_per_instance_totals(tiny_model, batch, params, monkeypatch):
    """Per instance: anchor coefficient + the sum of its variant coefficients (after Eq. 15, mean 1 already)."""
    x, y = batch
    seen = _spy_coefficients(monkeypatch)
    torch.manual_seed(0)
    out = build_method("lrat", params).loss(tiny_model.train(), x, y, context("pgd+cw"))
    (anchor, coefs), = seen
    assert coefs.shape == (len(y), 2) and torch.equal(out.weights, coefs.flatten())  # raw: the coefficients
    assert torch.allclose(out.relative_weights, anchor + coefs.sum(1), atol=1e-6)
    assert out.relative_weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    if params:
        assert (anchor > 0).any()  # the anchor coefficient is part of the total
    torch.manual_seed(0)
    assert build_method("lsat").loss(tiny_model, x, y, context("pgd")).relative_weights is None
