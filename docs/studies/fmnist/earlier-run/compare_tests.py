"""Two analyses of the study's per-example flags (flags.csv.gz beside this file) that `bench report` does not
print. (1) The gaps to AT under two tests, on the same per-example flags (flags.csv.gz beside this file): the exact
sign-flip test on per-point, run-averaged differences that `bench report` uses (bench.stats.paired_gap), and
the McNemar test on discordant pairs pooled over the seed-matched runs that the report used before (which
counts a test point once per seed as if the seeds were independent samples: too liberal when they share
points). (2) The Table 2 rows against SAA+CW (LRAT without GD), attack by attack, with the report's
statistics (bench.stats.paired_gap: bootstrap interval over the test points, sign-flip p). Prints Markdown
tables; the study's README quotes them.

    .venv/bin/python docs/studies/fmnist/compare_tests.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.config.catalog import row_label
from bench.stats import paired_gap

HERE = Path(__file__).resolve().parent
ROWS = [("gairat", "pgd"), ("gairat", "cw"), ("mail", "pgd"), ("mail", "cw"), ("lrat", "pgd"), ("lrat", "cw")]
UNSEEN = {"pgd": ["cw20"], "cw": ["fgsm", "pgd20"]}  # docs/methods.md (FGSM is related to PGD training)


def pooled_mcnemar_p(method: np.ndarray, baseline: np.ndarray) -> float:
    """The seeds' points stacked into one run, as if independent: paired_gap of one run on binary flags is the
    exact McNemar test on the discordant pairs (bench/stats.py), here pooled over the seeds."""
    return paired_gap(method.ravel(), baseline.ravel()).p


def flags(frame: pd.DataFrame, method: str, attack: str, eval_attack: str, gd: str | None = None) -> np.ndarray:
    """(seeds, points) robust flags of one row; `gd`: only LRAT runs with that gd_attack (results.csv's
    p_gd_attack: flags.csv.gz has no method parameters)."""
    rows = frame[(frame.method == method) & (frame.train_attack == attack) & (frame.eval_attack == eval_attack)]
    if gd is not None:
        rows = rows[rows.run_id.map(GD_OF) == gd]
    runs = rows.groupby(["seed", "run_id"])
    return np.stack([g.sort_values("point").robust.to_numpy() for _, g in runs]) if len(rows) else np.empty((0, 0))


GD_OF: dict[str, str] = {}  # run_id -> gd_attack, from results.csv
# (label, row with GD, reference row): each Table 2 row against SAA+CW (the paper's comparison), and GD+CW
# against the same training attacks without GD (the control: only the PGD variant's weight differs)
TABLE2 = [("GD+CW vs SAA+CW", ("pgd+cw", "pgd"), ("saa+cw", "none")),
          ("GD+SAA vs SAA+CW", ("pgd+saa", "pgd"), ("saa+cw", "none")),
          ("SAA+CW+GD vs SAA+CW", ("saa+cw+pgd", "pgd"), ("saa+cw", "none")),
          ("GD+CW vs PGD+CW (no GD)", ("pgd+cw", "pgd"), ("pgd+cw", "none"))]


def table2(frame: pd.DataFrame) -> None:
    attacks = ["natural", "fgsm", "pgd20", "cw20"]
    print("| LRAT rows | " + " | ".join(attacks) + " |")
    print("|:--|" + "--:|" * len(attacks))
    for label, (attack, gd), (ref_attack, ref_gd) in TABLE2:
        cells = []
        for eval_attack in attacks:
            m = flags(frame, "lrat", attack, eval_attack, gd)
            b = flags(frame, "lrat", ref_attack, eval_attack, ref_gd)
            if m.size == 0 or m.shape != b.shape:
                cells.append("--")
                continue
            g = paired_gap(m, b)
            cells.append(f"{g.gap:+.2f} [{g.low:.1f}, {g.high:.1f}], p {g.p:.2g}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    frame = pd.read_csv(HERE / "flags-2seeds.csv.gz", dtype={"run_id": str, "checkpoint_sha": str, "points_sha": str})
    frame = frame[frame.checkpoint == "best"]
    rows = pd.read_csv(HERE / "results-2seeds.csv", dtype={"run_id": str})
    GD_OF.update(rows.drop_duplicates("run_id").set_index("run_id").p_gd_attack.fillna("none").to_dict())
    print("| Row | eval attack | points | gap | p, sign-flip (now) | p, pooled McNemar (before) |")
    print("|:--|:--|--:|--:|--:|--:|")
    for method, attack in ROWS:
        for eval_attack in UNSEEN[attack]:
            for n_eval, part in frame.groupby("n_eval"):
                m, b = flags(part, method, attack, eval_attack), flags(part, "at", attack, eval_attack)
                if m.size == 0 or m.shape != b.shape:
                    continue
                g = paired_gap(m, b)
                print(f"| {row_label(method, attack)} | {eval_attack} | {n_eval} | {g.gap:+.2f} | {g.p:.2g} | "
                      f"{pooled_mcnemar_p(m, b):.2g} |")
    print()
    table2(frame)


if __name__ == "__main__":
    main()
