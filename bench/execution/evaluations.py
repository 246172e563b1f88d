"""Which evaluations a run has stored, for `bench status`: per evaluation folder its checkpoint, attacks and
number of test points ("best: natural,pgd20,cw20 @1000; best: aa @50"). Read from the folder and file names
only (bench.store.eval_group writes them), no file opened: instant, and a damaged file is still listed (status
names it as damaged). Torch-free."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config.catalog import WORST, eval_attack_order

# eval_group's "<checkpoint>-<threat model>-eps<eps>-n<N>[-<precision>]"; eps is written with %.6g (1e-05 too)
GROUP = re.compile(r"(?P<checkpoint>.+?)-(?P<threat_model>linf|l2)-eps(?P<eps>.+?)-n(?P<n>\d+)(?:-(?P<precision>\w+))?")


@dataclass(frozen=True)
class StoredEvaluation:
    checkpoint: str
    threat_model: str
    eps: float  # as the folder's name writes it: 6 significant digits (8/255 reads 0.0313725)
    n_eval: int
    precision: str
    attacks: tuple[str, ...]  # the attacks stored, in the report's column order; the derived worst row left out

    def to_dict(self) -> dict[str, Any]:
        """As `bench status --json` prints it (docs/cli.md)."""
        return {"checkpoint": self.checkpoint, "threat_model": self.threat_model, "eps": self.eps,
                "n_eval": self.n_eval, "precision": self.precision, "attacks": list(self.attacks)}


def _attack_key(name: str) -> tuple[int, str]:
    order = eval_attack_order()
    return (order.index(name), name) if name in order else (len(order), name)  # a plugin's after the built-ins


def _checkpoint_key(name: str) -> tuple[int, int, str]:
    epoch = name[5:]
    rank = {"best": 0, "last": 1}.get(name, 2 if name.startswith("epoch") and epoch.isdigit() else 3)
    return rank, int(epoch) if rank == 2 else 0, name


def stored_evaluations(run_dir: Path) -> list[StoredEvaluation]:
    """The run's evaluation folders that hold at least one attack's file: the most test points first, then
    best, last, epochN and other labels."""
    evals = Path(run_dir) / "evals"
    found = []
    for folder in sorted(evals.iterdir()) if evals.is_dir() else []:
        match = GROUP.fullmatch(folder.name)
        if match is None or not folder.is_dir():
            continue
        attacks = sorted((p.stem for p in folder.glob("*.json") if not p.name.startswith(".") and p.stem != WORST),
                         key=_attack_key)
        if attacks:
            found.append(StoredEvaluation(match["checkpoint"], match["threat_model"], float(match["eps"]),
                                          int(match["n"]), match["precision"] or "fp32", tuple(attacks)))
    return sorted(found, key=lambda e: (-e.n_eval, _checkpoint_key(e.checkpoint), e.threat_model, e.eps, e.precision))


def evaluations_text(found: list[StoredEvaluation]) -> str:
    """'best: natural,pgd20,cw20 @1000; last: natural,pgd20,cw20 @1000; best: aa @50'; the threat model and
    eps are named only when the run has more than one, the precision when it is not fp32."""
    several = len({(e.threat_model, e.eps) for e in found}) > 1
    return "; ".join(f"{e.checkpoint}: {','.join(e.attacks)} @{e.n_eval}"
                     + (f" {e.threat_model} eps {e.eps:.6g}" if several else "")
                     + ("" if e.precision == "fp32" else f" {e.precision}") for e in found)
