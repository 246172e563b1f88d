"""TRADES and MART against their official formulas computed by hand, the `kl` training attack's contract, and
LRAT's Table 2 ablation (GAIRAT's GD weight for one variant inside the local objective)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bench.attacks.kl import KLPGD
from bench.attacks.losses import ce_loss, kl_loss
from bench.config.catalog import row_label
from bench.config.names import UsageError
from methods import build_method
from methods.base import run_attack
from methods.gairat import gairat_weights
from methods.lrat import GD_LAMBDA, lrat_coefficients
from methods.mart import mart_loss
from methods.trades import trades_loss
from support import context


def test_trades_loss_by_hand():
    # p(x) = (1/2, 1/2), p(x_adv) = (3/4, 1/4), y = 0: CE = ln 2, KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    nat, adv, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    assert trades_loss(nat, adv, y).item() == pytest.approx(math.log(2) + 6 * 0.5 * math.log(4 / 3), rel=1e-6)
    assert trades_loss(nat, adv, y, beta=1.0).item() == pytest.approx(math.log(2) + 0.5 * math.log(4 / 3), rel=1e-6)


def test_trades_reduces_to_natural_ce():
    torch.manual_seed(0)
    nat, adv, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    assert torch.equal(trades_loss(nat, adv, y, beta=0.0), F.cross_entropy(nat, y))
    assert trades_loss(nat, nat, y).item() == pytest.approx(F.cross_entropy(nat, y).item(), abs=1e-6)  # KL(p||p) = 0


def test_trades_kl_gradient_reaches_both_distributions():
    # trades.py detaches neither side of nn.KLDivLoss: the natural logits get gradient from the KL as well
    nat, adv, y = torch.tensor([[0.0, 0.0]], requires_grad=True), torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([0])
    (g_nat,) = torch.autograd.grad(trades_loss(nat, adv, y) - F.cross_entropy(nat, y), [nat])
    assert g_nat.abs().sum() > 0


def test_mart_loss_by_hand():
    p_adv, p_nat = [0.5, 0.3, 0.2], [0.6, 0.2, 0.2]
    adv, nat = torch.log(torch.tensor([p_adv, p_adv])), torch.log(torch.tensor([p_nat, p_nat]))
    y = torch.tensor([0, 2])  # most likely wrong class under x_adv: 1 (p 0.3) for y = 0, 0 (p 0.5) for y = 2
    kl = sum(q * (math.log(q) - math.log(p + 1e-12)) for q, p in zip(p_nat, p_adv))
    bce = [-math.log(0.5) - math.log(1.0001 - 0.3 + 1e-12), -math.log(0.2) - math.log(1.0001 - 0.5 + 1e-12)]
    robust = [kl * (1.0000001 - 0.6), kl * (1.0000001 - 0.2)]
    for beta in (6.0, 0.5):
        expected = sum(bce) / 2 + beta * sum(robust) / 2
        assert mart_loss(nat, adv, y, beta).item() == pytest.approx(expected, rel=1e-5)


def test_mart_weight_keeps_its_gradient():
    # mart.py multiplies the KL by (1.0000001 - p_y(x)) without detaching it
    nat = torch.tensor([[0.5, 0.0, 0.0]], requires_grad=True)
    adv, y = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0])
    (g,) = torch.autograd.grad(mart_loss(nat, adv, y), [nat])
    p_nat = nat.detach().softmax(1)
    kl_only = torch.autograd.grad(6.0 * kl_loss(nat, adv).mean() * (1.0000001 - p_nat[0, 0]), [nat])[0]
    assert not torch.allclose(g, kl_only, atol=1e-4)  # the weight's own gradient is there


def test_kl_attack_stays_in_the_ball_and_raises_the_kl(tiny_model, batch):
    x, y = batch
    tiny_model.eval()
    torch.manual_seed(0)
    eps = 0.1
    x_adv, kappa = KLPGD(eps, steps=5)(tiny_model, x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert kappa is not None and kappa.min() >= 0 and kappa.max() <= 5
    with torch.no_grad():
        target = tiny_model(x)
        torch.manual_seed(0)
        start, _ = KLPGD(eps, steps=0)(tiny_model, x, y)  # x + 0.001 N(0, I), projected
        assert (start - x).abs().max() < 0.01
        assert kl_loss(target, tiny_model(x_adv)).mean() > 10 * kl_loss(target, tiny_model(start)).mean()


def test_trades_and_mart_take_their_attacks():
    with pytest.raises(UsageError, match="trains on its own attack kl, not 'pgd': use --train-attack kl"):
        build_method("trades").check_attacks(("pgd",))
    build_method("trades").check_attacks(("kl",))
    with pytest.raises(UsageError, match="one training attack"):
        build_method("mart").check_attacks(("pgd", "cw"))
    build_method("mart").check_attacks(("cw",))


def test_trades_method_is_its_formula(tiny_model, batch):
    """The method's loss = trades_loss on f(x) and f(kl attack(x)), both in train mode."""
    x, y = batch
    ctx = context("kl")
    model = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)
    loss = build_method("trades").loss(model, x, y, ctx).loss
    model = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)
    x_adv = run_attack(model, ctx.attacks[0], x, y, "eval").x_adv
    assert torch.allclose(loss, trades_loss(model(x), model(x_adv), y), atol=1e-6)


# ---- Table 2: GD inside LRAT ------------------------------------------------------------------------------

def test_fixed_weights_replace_eq12_for_one_variant():
    z = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    y = torch.tensor([0, 0])
    gd = torch.tensor([0.5, 1.5])
    anchor, coefs = lrat_coefficients([z, z], y, fixed={0: gd})
    w1 = 2 * (1 - torch.tensor([0.8, 0.0])).sqrt()  # Eq. 12 for variant 1: t = 0.8 and 0
    total = (gd + w1).mean()  # no anchor: every sum of w is above C = 0.1
    assert torch.allclose(coefs[:, 0], gd / total) and torch.allclose(coefs[:, 1], w1 / total)
    assert torch.equal(anchor, torch.zeros(2))


def test_lrat_gd_weights_the_pgd_variant_with_gairat(tiny_model, batch):
    x, y = batch
    ctx = context("pgd+cw")
    model = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)
    loss = build_method("lrat", {"gd_attack": "pgd"}).loss(model, x, y, ctx).loss
    model = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)
    results = [run_attack(model, a, x, y, "eval") for a in ctx.attacks]
    logits = [model(r.x_adv) for r in results]
    gd = gairat_weights(results[0].kappa, ctx.attacks[0].steps, GD_LAMBDA)
    _, coefs = lrat_coefficients(logits, y, fixed={0: gd})
    expected = (coefs[:, 0] * ce_loss(logits[0], y) + coefs[:, 1] * ce_loss(logits[1], y)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    _, plain = lrat_coefficients(logits, y)
    assert not torch.allclose(coefs, plain)  # GD changed the weights


def test_table2_labels():
    assert row_label("lrat", "pgd+cw", {"gd_attack": "pgd"}) == "LRAT (GD+CW)"
    assert row_label("lrat", "saa+cw+pgd", {"gd_attack": "pgd"}) == "LRAT (SAA+CW+GD)"
    assert row_label("lrat", "saa+cw", {"gd_attack": "none"}) == "LRAT (SAA+CW)"
    assert row_label("trades", "kl") == "TRADES (KL)"
