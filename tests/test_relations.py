"""The attack-relation rule (bench/config/relations.py) against the LRAT paper's marks and the stored rows."""
from __future__ import annotations

import pytest

from bench.config.relations import ATTACK_RELATIONS, attack_relation, row_relation, simulated_attacks

EVAL = ("natural", "fgsm", "pgd20", "cw20", "apgd-ce", "apgd-t", "fab-t", "square", "aa")


@pytest.mark.parametrize("train,expected", [
    # the rule: seen = own loss and algorithm; related = same loss, other optimiser/steps, or a
    # component of it; unseen = the rest
    ("pgd", {"pgd20": "seen", "fgsm": "related", "apgd-ce": "related"}),
    ("cw", {"cw20": "seen"}),
    ("saa", {"apgd-t": "related", "aa": "related"}),  # the paper's "(rel)" marks for the SAA rows
    ("fgsm", {"fgsm": "seen", "pgd20": "related", "apgd-ce": "related"}),
    # TRADES' KL attack: its logit gradient is CE's on confidently correct points (test_kl_gradient_is_ce_like)
    ("kl", {"pgd20": "related", "fgsm": "related", "apgd-ce": "related"}),
    # combined training: the strongest relation of any part wins
    ("saa+cw", {"cw20": "seen", "apgd-t": "related", "aa": "related"}),
    ("pgd+saa", {"pgd20": "seen", "fgsm": "related", "apgd-ce": "related", "apgd-t": "related", "aa": "related"}),
])
def test_rule(train, expected):
    got = {a: attack_relation(a, train) for a in EVAL}
    assert got == {a: expected.get(a, "unseen") for a in EVAL}


def test_unseen_never_includes_pgd20_for_saa_cw():
    """LRAT-SAA+CW's unseen set is exactly PGD-20 among the paper's columns (PGD, CW, AA)."""
    assert [a for a in ("pgd20", "cw20", "aa") if attack_relation(a, "saa+cw") == "unseen"] == ["pgd20"]


def test_lrat_anchor_attack_counts_as_simulated():
    assert simulated_attacks("cw", {"anchor": "pgd"}) == ("cw", "pgd")
    assert simulated_attacks("cw", {"anchor": "natural"}) == ("cw",)
    assert attack_relation("pgd20", "cw", {"anchor": "pgd"}) == "seen"
    assert attack_relation("aa", "cw", {"anchor": "saa"}) == "related"
    assert attack_relation("pgd20", "cw", {"anchor": "natural"}) == "unseen"


def test_other_threat_model_or_budget_is_unseen():
    assert attack_relation("pgd20", "pgd", threat_model="l2") == "unseen"
    assert attack_relation("pgd20", "pgd", eval_eps=0.2, train_eps=0.1) == "unseen"
    assert attack_relation("pgd20", "pgd", eval_eps=0.1, train_eps=0.1) == "seen"


def test_row_relation_reads_a_stored_row():
    row = {"eval_attack": "pgd20", "train_attack": "cw", "p_anchor": "pgd", "threat_model": "linf",
           "eps": 0.1, "eval_eps": 0.1}
    assert row_relation(row) == "seen"
    assert row_relation({**row, "eval_eps": float("nan"), "p_anchor": float("nan")}) == "unseen"


def test_every_training_attack_has_a_row():
    from bench.attacks.training import TRAIN_ATTACKS
    assert set(TRAIN_ATTACKS) <= set(ATTACK_RELATIONS)


def test_kl_gradient_is_ce_like():
    """Why `kl` relates to the CE attacks: d KL(p || softmax(z))/dz = softmax(z) - p and d CE(z, y)/dz =
    softmax(z) - onehot(y); with the clean prediction p confidently correct (p_y = 0.95) the two directions
    agree (median cosine over random adversarial logits >= 0.9)."""
    import numpy as np
    rng = np.random.default_rng(0)
    p = np.full(10, 0.05 / 9)
    p[0] = 0.95
    z = rng.normal(0, 2, size=(2000, 10))
    q = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    kl, ce = q - p, q - np.eye(10)[0]
    cos = (kl * ce).sum(1) / np.linalg.norm(kl, axis=1) / np.linalg.norm(ce, axis=1)
    assert np.median(cos) >= 0.9
