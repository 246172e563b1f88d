"""How an evaluation attack relates to what a run simulated in training: `seen`, `related` or `unseen`
(torch-free: the report reads it too). The rule and the LRAT paper's marks are tabled in docs/methods.md.

- seen: the eval attack is the training attack's own loss and algorithm (`pgd20` for `pgd`, `cw20` for `cw`);
- related: the same loss with another optimiser or step count, or an attack that contains it as a component
  (`fgsm` and `apgd-ce` for `pgd`, and for TRADES' `kl`, whose logit gradient is close to CE's; `apgd-t` and `aa` for `saa`: the paper's "(rel)", since SAA is a simplified
  APGD-T and APGD-T is part of AutoAttack);
- unseen: everything else, and every evaluation under another threat model or budget (training is L-inf at
  the training eps).

A run simulates its training attacks (`saa+cw`: both) and, for a method whose `anchor` parameter names a
training attack (LRAT's x*, `anchor=pgd|saa`), that attack too. The strongest relation of any of them wins.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Relation = Literal["seen", "related", "unseen"]
RELATIONS: tuple[Relation, ...] = ("seen", "related", "unseen")  # strongest first

# training attack -> {eval attack: relation}; an eval attack not listed is unseen.
ATTACK_RELATIONS: dict[str, dict[str, Relation]] = {
    "pgd": {"pgd20": "seen", "fgsm": "related", "apgd-ce": "related"},  # CE: other step counts / optimiser
    "cw": {"cw20": "seen"},
    "saa": {"apgd-t": "related", "aa": "related"},  # targeted DLR with APGD: a simplified APGD-T
    "fgsm": {"fgsm": "seen", "pgd20": "related", "apgd-ce": "related"},  # CE, one signed step
    # TRADES' KL(p(x) || p(x_adv)): on a confidently correct point its gradient on the logits is close to CE's
    # (median cosine 0.96 at p_y = 0.95, issue 23), so the CE attacks are related, as for `pgd`
    "kl": {"pgd20": "related", "fgsm": "related", "apgd-ce": "related"},
}


def simulated_attacks(train_attack: str, method_params: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The training attacks a run simulates: the parts of `train_attack` and an attacked anchor."""
    parts = [p.strip() for p in train_attack.split("+") if p.strip()]
    anchor = (method_params or {}).get("anchor")
    if isinstance(anchor, str) and anchor in ATTACK_RELATIONS and anchor not in parts:
        parts.append(anchor)
    return tuple(parts)


def attack_relation(eval_attack: str, train_attack: str, method_params: Mapping[str, Any] | None = None, *,
                    threat_model: str = "linf", eval_eps: float | None = None,
                    train_eps: float | None = None) -> Relation:
    """The relation of `eval_attack` to a run trained with `train_attack` (and `method_params`)."""
    if threat_model != "linf" or (eval_eps is not None and train_eps is not None
                                  and abs(float(eval_eps) - float(train_eps)) > 1e-9):
        return "unseen"
    found = {ATTACK_RELATIONS.get(a, {}).get(eval_attack, "unseen") for a in simulated_attacks(train_attack, method_params)}
    return next((r for r in RELATIONS if r in found), "unseen")


def row_relation(row: Mapping[str, Any]) -> Relation:
    """The relation of a stored result row, from its own columns (method parameters as `p_<name>`)."""
    params = {k[2:]: v for k, v in row.items() if k.startswith("p_")}
    eps, eval_eps = row.get("eps"), row.get("eval_eps")
    return attack_relation(row["eval_attack"], row["train_attack"], params,
                           threat_model=row.get("threat_model") or "linf",
                           eval_eps=None if _missing(eval_eps) else eval_eps,
                           train_eps=None if _missing(eps) else eps)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and x != x)
