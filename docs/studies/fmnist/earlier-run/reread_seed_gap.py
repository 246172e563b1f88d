"""Re-read the superseded 2-seed FMNIST study's verdicts with the seed as the unit (bench.stats.seed_gap).

The 2-seed run's report judged methods with `paired_gap` (test points as the unit: about those trained models).
This script takes its committed per-example flags (flags-2seeds.csv.gz), the attack sets of its gap table
(gap_table-2seeds.csv) and the run parameters (results-2seeds.csv, for the Table 2 rows that share a training
attack), and prints per variant and group: the old gap and p, each seed's gap, and seed_gap's p (1 df with two
seeds: the report gives no verdict below 3 seeds).

    .venv/bin/python docs/studies/fmnist/earlier-run/reread_seed_gap.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.stats import paired_gap, seed_gap

HERE = Path(__file__).parent
GROUPS = (("seen", "seen_attacks", "all"), ("unseen_mean", "unseen_attacks", "mean"),
          ("unseen_worst", "unseen_attacks", "all"))


def runs_by_variant(results: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """Variant label (as the old report wrote it) -> [(seed, run_id)], from the runs' method, attack and GD."""
    runs = results[["run_id", "method", "train_attack", "seed", "p_gd_attack"]].drop_duplicates("run_id")
    out: dict[str, list[tuple[int, str]]] = {}
    for r in runs.itertuples():
        attack = r.train_attack.upper()
        if r.method == "lrat" and isinstance(r.p_gd_attack, str) and r.p_gd_attack == "pgd":
            attack = {"PGD+CW": "GD+CW", "PGD+SAA": "GD+SAA", "SAA+CW+PGD": "SAA+CW+GD"}[attack]
        label = f"{r.method.upper()} ({attack})"
        out.setdefault(label, []).append((int(r.seed), r.run_id))
    return {k: sorted(v) for k, v in out.items()}


def matrix(flags: pd.DataFrame, runs: list[tuple[int, str]], attacks: list[str], how: str) -> np.ndarray:
    rows = []
    for _, run in runs:
        f = flags[(flags.run_id == run)]
        m = np.stack([f[f.eval_attack == a].sort_values("point")["robust"].to_numpy(bool) for a in attacks])
        rows.append(m.all(axis=0) if how == "all" else m.mean(axis=0))
    return np.stack(rows).astype(float)


def main() -> None:
    flags = pd.read_csv(HERE / "flags-2seeds.csv.gz")
    flags = flags[flags.checkpoint == "best"]
    gaps = pd.read_csv(HERE / "gap_table-2seeds.csv")
    variants = runs_by_variant(pd.read_csv(HERE / "results-2seeds.csv", low_memory=False))
    print("variant | group | old gap | old p (paired_gap) | per-seed gaps | seed_gap p (1 df)")
    for g in gaps.itertuples():
        for key, column, how in GROUPS:
            attacks = [a for a in str(getattr(g, column)).split(",") if a and a != "nan"]
            if not attacks:
                continue
            m = matrix(flags, variants[g.variant], attacks, how)
            b = matrix(flags, variants[g.baseline], attacks, how)
            old, new = paired_gap(m, b), seed_gap(m, b)
            per_seed = ", ".join(f"{x:+.1f}" for x in new.per_seed)
            print(f"{g.variant} | {key} | {old.gap:+.2f} | {old.p:.2g} | {per_seed} | {new.p:.2g}")


if __name__ == "__main__":
    main()
