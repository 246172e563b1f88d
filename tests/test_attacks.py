"""Attack invariants (budget, box, eps = 0, kappa range, mode untouched), kappa semantics on a scripted model,
and the SAA building blocks checked against hand-made cases."""
from __future__ import annotations

import pytest
import torch

from bench.attacks.pgd import PGD, FGSMRandomStart
from bench.config import TrainConfig
from bench.attacks.losses import cw_loss, prob_margin
from bench.attacks.saa import SAA, top_wrong_classes
from bench.config.method_params import parse_train_attack
from bench.attacks.training import TRAIN_ATTACKS, build_train_attacks
from bench.config.names import UsageError

EPS = 0.1


def all_train_attacks(eps=EPS):
    cfg = TrainConfig(method="at", train_attack="pgd", eps=eps, attack_steps=3, attack_step_size=eps / 4,
                      saa_steps=4)
    return {name: info.build(cfg) for name, info in TRAIN_ATTACKS.items()}


@pytest.mark.parametrize("name", sorted(TRAIN_ATTACKS))
@pytest.mark.parametrize("training", [True, False])
def test_training_attack_invariants(name, training, tiny_model, batch):
    x, y = batch
    tiny_model.train(training)
    result = all_train_attacks()[name](tiny_model, x, y)
    assert tiny_model.training is training  # an attack never switches the mode
    assert result.x_adv.shape == x.shape and not result.x_adv.requires_grad
    assert (result.x_adv - x).abs().max() <= EPS + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.x_adv != x).any()  # it actually moved
    if TRAIN_ATTACKS[name].has_kappa:
        assert result.kappa.dtype == torch.long and result.kappa.min() >= 0 and result.kappa.max() <= 3
    else:
        assert result.kappa is None


@pytest.mark.parametrize("name", sorted(TRAIN_ATTACKS))
def test_eps_zero_leaves_input_unchanged(name, tiny_model, batch):
    x, y = batch
    tiny_model.eval()
    assert torch.equal(all_train_attacks(eps=0.0)[name](tiny_model, x, y).x_adv, x)


def test_l2_pgd_stays_in_l2_ball(tiny_model, batch):
    x, y = batch
    tiny_model.eval()
    x_adv = PGD(0.5, steps=5, step_size=0.2, norm="l2")(tiny_model, x, y).x_adv
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5 and norms.max() > 0.1
    assert x_adv.min() >= 0 and x_adv.max() <= 1


class ScriptedFlip(torch.nn.Module):
    """Predicts the true class for its first `k` forward calls, a wrong class afterwards (per batch)."""

    def __init__(self, y: torch.Tensor, k: torch.Tensor):
        super().__init__()
        self.y, self.k, self.calls = y, k, 0

    def forward(self, x):
        correct = self.calls < self.k  # (n,) bool
        self.calls += 1
        target = torch.where(correct, self.y, (self.y + 1) % 10)
        return 5.0 * torch.nn.functional.one_hot(target, 10).float() + 0.0 * x.flatten(1)[:, :10]


def test_kappa_counts_correct_iterates_before_each_step(batch):
    x, y = batch
    k = torch.arange(len(y)) % 12  # 0..11: values above K saturate at K
    model = ScriptedFlip(y, k)
    result = PGD(EPS, steps=10)(model, x, y)
    assert model.calls == 10  # the final iterate is never checked
    assert torch.equal(result.kappa, k.clamp(max=10))


def test_pgd_is_deterministic_given_the_seed(tiny_model, batch):
    x, y = batch
    tiny_model.eval()
    torch.manual_seed(7)
    a = PGD(EPS)(tiny_model, x, y).x_adv
    torch.manual_seed(7)
    b = PGD(EPS)(tiny_model, x, y).x_adv
    assert torch.equal(a, b)


def test_cw_loss_matches_hand_computation():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    # row 0: z_y - max_other = 2 -> -(2 + kappa) ; row 1: -2 + kappa clamped at 0 when kappa < 2
    assert torch.allclose(cw_loss(logits, y, kappa=0.0), torch.tensor([-2.0, 0.0]))
    assert torch.allclose(cw_loss(logits, y, kappa=50.0), torch.tensor([-52.0, -48.0]))


def test_prob_margin_matches_hand_computation():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    assert torch.allclose(prob_margin(logits, torch.tensor([0, 2])), torch.tensor([0.5, -0.6]), atol=1e-6)


def test_top_wrong_classes_skips_the_true_class():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0]])
    assert top_wrong_classes(logits, torch.tensor([1]), 3).tolist() == [[2, 3, 4]]
    assert top_wrong_classes(logits, torch.tensor([3]), 3).tolist() == [[1, 2, 4]]


def test_saa_keeps_the_lowest_margin_variant_per_example(monkeypatch, tiny_model, batch):
    """Script the three per-target APGD runs; the merge must take, per example, the lowest-margin one."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    x, y = batch
    tiny_model.eval()
    candidates = [x.clamp(0, 1) * s for s in (1.0, 0.9, 0.8)]
    calls = []

    def scripted(self, x_in, y_in, x_init=None):
        calls.append(self.y_target.clone())
        return candidates[len(calls) - 1], None, None, None

    monkeypatch.setattr(APGDAttack_targeted, "attack_single_run", scripted)
    out = SAA(eps=EPS)(tiny_model, x, y).x_adv
    margins = torch.stack([prob_margin(tiny_model(c), y) for c in candidates])
    expected = torch.stack(candidates)[margins.argmin(0), torch.arange(len(y))]
    assert torch.equal(out, expected)
    with torch.no_grad():
        targets = top_wrong_classes(tiny_model(x), y, 3)
    assert all(torch.equal(c, targets[:, j]) for j, c in enumerate(calls))


def test_saa_never_reseeds_the_training_rng(monkeypatch, tiny_model, batch):
    x, y = batch
    tiny_model.eval()

    def forbidden(*a, **k):
        raise AssertionError("a training attack must not reseed the global RNG")

    monkeypatch.setattr(torch.random, "manual_seed", forbidden)
    monkeypatch.setattr(torch, "manual_seed", forbidden)
    SAA(eps=EPS, steps=3)(tiny_model, x, y)


def test_fgsm_random_start_has_no_kappa(tiny_model, batch):
    x, y = batch
    assert FGSMRandomStart(EPS)(tiny_model.eval(), x, y).kappa is None


def test_train_attack_grammar():
    assert parse_train_attack(" SAA + cw ") == "saa+cw"
    with pytest.raises(UsageError, match="Did you mean: pgd"):
        parse_train_attack("pdg")
    with pytest.raises(UsageError, match="twice"):
        parse_train_attack("cw+cw")
    cfg = TrainConfig(method="lrat", train_attack="saa+cw", eps=EPS)
    assert [type(a).__name__ for a in build_train_attacks(cfg)] == ["SAA", "PGD"]
