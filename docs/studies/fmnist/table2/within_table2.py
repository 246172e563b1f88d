"""The Table 2 ablation's own comparisons, with the seed as the unit (bench.stats.seed_gap).

`bench report` compares every row with the baseline (AT (PGD)). Table 2's question is between its rows: what
GAIRAT's weight on the PGD variant (GD) does inside LRAT. This script reads the report's committed per-example
flags (flags.csv.gz, last checkpoints) and the runs' parameters (results.csv, for `p_gd_attack`: the control
shares GD+CW's training attacks) and prints, per comparison and attack, the seed-mean gap in accuracy points,
each seed's gap, how many seeds are lower, and seed_gap's interval and p (t on seeds - 1 df).

    .venv/bin/python docs/studies/fmnist/table2/within_table2.py > docs/studies/fmnist/table2/within-table2.txt
    .venv/bin/python docs/studies/fmnist/table2/within_table2.py docs/studies/fmnist/table2/avx2 \
        > docs/studies/fmnist/table2/avx2/within-table2.txt      # the same runs under ATEN_CPU_CAPABILITY=avx2

DIR (default: this folder) holds a report's flags.csv.gz and results.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config.catalog import row_label
from bench.stats import seed_gap

HERE = Path(__file__).parent
ATTACKS = ("natural", "fgsm", "pgd20", "cw20")
COMPARISONS = (  # (row, against), labelled as the report labels them; LRAT (PGD+CW) is GD+CW's control, no GD
    ("LRAT (GD+CW)", "LRAT (PGD+CW)"), ("LRAT (GD+CW)", "LRAT (SAA+CW)"), ("LRAT (GD+SAA)", "LRAT (SAA+CW)"),
    ("LRAT (SAA+CW+GD)", "LRAT (SAA+CW)"), ("LRAT (SAA+CW)", "AT (PGD)"))


def label(run: pd.Series) -> str:
    """The report's row label (bench.config.catalog.row_label): the PGD variant reads 'GD' where GAIRAT's weight
    is on it."""
    gd = run.p_gd_attack if isinstance(run.p_gd_attack, str) else None
    return row_label(run.method, run.train_attack, {"gd_attack": gd})


def flag_matrix(flags: pd.DataFrame, runs: pd.DataFrame, attack: str) -> np.ndarray:
    """(seeds x points) robust flags of `runs` on `attack`, rows in seed order ('worst': robust to all four)."""
    rows = []
    for run_id in runs.sort_values("seed").run_id:
        f = flags[flags.run_id == run_id]
        per = [f[f.eval_attack == a].sort_values("point").robust.to_numpy(bool) for a in
               (ATTACKS if attack == "worst" else (attack,))]
        rows.append(np.logical_and.reduce(per))
    return np.stack(rows).astype(float)


def main(folder: Path) -> None:
    flags = pd.read_csv(folder / "flags.csv.gz")
    flags = flags[flags.checkpoint == "last"]
    results = pd.read_csv(folder / "results.csv", low_memory=False)
    runs = results.drop_duplicates("run_id")[["run_id", "method", "train_attack", "seed", "p_gd_attack"]].copy()
    runs["row"] = runs.apply(label, axis=1)
    print("comparison | attack | gap (points) | per seed | seeds lower | 95% interval | p")
    for row, against in COMPARISONS:
        a, b = runs[runs.row == row], runs[runs.row == against]
        assert list(a.sort_values("seed").seed) == list(b.sort_values("seed").seed), (row, against)
        for attack in (*ATTACKS, "worst"):
            g = seed_gap(flag_matrix(flags, a, attack), flag_matrix(flags, b, attack))
            per = ", ".join(f"{x:+.1f}" for x in g.per_seed)
            print(f"{row} - {against} | {attack} | {g.gap:+.2f} | {per} | {g.seeds_lower}/{g.n_seeds} | "
                  f"[{g.low:+.1f}, {g.high:+.1f}] | {g.p:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
