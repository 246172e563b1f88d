"""Tables: a golden LaTeX string for a small fixed DataFrame (bold best, ± std, seen mark, caption counts),
its Markdown twin, and the gap tables' p-values and intervals."""
from __future__ import annotations

import math

import pandas as pd

from bench.report.tables import (attack_gap_latex, attack_gap_markdown, gap_table_latex, gap_table_markdown,
                                 main_table_latex, main_table_markdown, tex_escape)

NAN = math.nan


def fixed_cells() -> pd.DataFrame:
    rows = [  # variant, method, train attack, eval attack, seen, mean, std, ci_low, ci_high, seeds
        ("AT (PGD)", "at", "pgd", "natural", False, 83.17, 0.5, 80.04, 86.01, 3),
        ("AT (PGD)", "at", "pgd", "pgd20", True, 51.14, 1.25, 48.0, 54.26, 3),
        ("AT (PGD)", "at", "pgd", "aa", False, 46.123, 0.304, 43.6, 48.5, 3),
        ("GAIRAT (PGD)", "gairat", "pgd", "natural", False, 79.69, 0.75, 76.0, 83.0, 3),
        ("GAIRAT (PGD)", "gairat", "pgd", "pgd20", True, 60.82, 2.0, 57.1, 64.4, 3),
        ("GAIRAT (PGD)", "gairat", "pgd", "aa", False, 32.14, 1.0, 29.0, 35.2, 3),
        ("LRAT (SAA)", "lrat", "saa", "natural", False, 79.65, NAN, 76.1, 83.2, 1),
        ("LRAT (SAA)", "lrat", "saa", "aa", False, 46.1249, NAN, 43.0, 49.3, 1),  # ties AT's 46.12 as printed
    ]
    cols = ["variant", "method", "train_attack", "eval_attack", "seen", "mean", "std", "ci_low", "ci_high", "n_seeds"]
    cells = pd.DataFrame(rows, columns=cols).assign(n_points=500)
    related = (cells.variant == "LRAT (SAA)") & (cells.eval_attack == "aa")  # the paper's "(rel)"
    return cells.assign(relation=["seen" if s else "related" if r else "unseen" for s, r in zip(cells.seen, related)])


GOLDEN = r"""\begin{table}[htbp]
\centering
\small
\caption{Accuracy (\%) on CIFAR-10, ResNet-18: mean $\pm$ std over 1--3 seeds per row, below it the 95\% bootstrap interval over the 500 test points. Bold: best in each column. $^\dagger$: the evaluation attack was simulated in training (seen); $^\ddagger$: related to the training attack (same loss, another optimiser or step count, or a component of it).}
\label{tab:main}
\begin{tabular}{lrrr}
\toprule
Method (train attack) & Natural & PGD-20 & AA \\
\midrule
AT (PGD) & \textbf{83.17} $\pm$ 0.50 & 51.14 $\pm$ 1.25$^{\dagger}$ & \textbf{46.12} $\pm$ 0.30 \\
 & {\scriptsize $[80.0, 86.0]$} & {\scriptsize $[48.0, 54.3]$} & {\scriptsize $[43.6, 48.5]$} \\
GAIRAT (PGD) & 79.69 $\pm$ 0.75 & \textbf{60.82} $\pm$ 2.00$^{\dagger}$ & 32.14 $\pm$ 1.00 \\
 & {\scriptsize $[76.0, 83.0]$} & {\scriptsize $[57.1, 64.4]$} & {\scriptsize $[29.0, 35.2]$} \\
LRAT (SAA) & 79.65 & -- & \textbf{46.12}$^{\ddagger}$ \\
 & {\scriptsize $[76.1, 83.2]$} &  & {\scriptsize $[43.0, 49.3]$} \\
\bottomrule
\end{tabular}
\end{table}
"""


def test_main_table_golden_latex():
    assert main_table_latex(fixed_cells(), "CIFAR-10, ResNet-18") == GOLDEN


def test_main_table_markdown_twin():
    md = main_table_markdown(fixed_cells(), "CIFAR-10, ResNet-18")
    lines = md.splitlines()
    assert lines[0] == "| Method (train attack) | Natural | PGD-20 | AA |"
    assert lines[2] == ("| AT (PGD) | **83.17** ± 0.50 <sub>[80.0, 86.0]</sub> | 51.14 ± 1.25 † <sub>[48.0, 54.3]</sub> "
                        "| **46.12** ± 0.30 <sub>[43.6, 48.5]</sub> |")
    assert lines[4] == "| LRAT (SAA) | 79.65 <sub>[76.1, 83.2]</sub> | -- | **46.12** ‡ <sub>[43.0, 49.3]</sub> |"
    assert "1–3 seeds per row" in md and "500 test points" in md and "†: the evaluation attack" in md


def fixed_gaps() -> tuple[pd.DataFrame, pd.DataFrame]:
    gap = {"variant": "GAIRAT (PGD)", "method": "gairat", "train_attack": "pgd", "baseline": "AT (PGD)",
           "seen_attacks": "pgd20", "unseen_attacks": "cw20,aa", "n_seeds": 3, "n_baseline_seeds": 3, "n_points": 500}
    for key, acc, g, lo, hi, p, sd, slo, shi, sp, lower in (
            ("seen", 60.82, 9.68, 7.1, 12.3, 2e-6, 1.5, 4.1, 15.2, 0.012, 0),
            ("related", NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN),
            ("unseen_mean", 35.4, -12.6, -15.0, -10.2, 0.004, 2.25, -20.0, -5.2, 0.02, 3),
            ("unseen_worst", 32.14, -13.98, -16.5, -11.4, 0.0312, NAN, -30.0, 2.0, 0.07, 2)):
        gap.update({f"{key}_acc": acc, f"{key}_gap": g, f"{key}_gap_low": lo, f"{key}_gap_high": hi, f"{key}_p": p,
                    f"{key}_gap_seed_sd": sd, f"{key}_seed_low": slo, f"{key}_seed_high": shi, f"{key}_seed_p": sp,
                    f"{key}_seeds_lower": lower, f"{key}_n_pairs": 3 if lower == lower else NAN})
    gap["related_attacks"] = ""
    per_attack = pd.DataFrame([
        {"variant": "GAIRAT (PGD)", "baseline": "AT (PGD)", "eval_attack": "pgd20", "seen": True, "gap": 9.68,
         "gap_low": 7.1, "gap_high": 12.3, "p": 2e-6, "seed_p": 0.0004, "n_pairs": 3, "n_seeds": 3, "n_points": 500},
        {"variant": "GAIRAT (PGD)", "baseline": "AT (PGD)", "eval_attack": "cw20", "seen": False, "gap": -1.0,
         "gap_low": -3.0, "gap_high": 1.0, "p": 0.001, "seed_p": 0.2, "n_pairs": 3, "n_seeds": 3, "n_points": 500},
        {"variant": "LRAT (PGD)", "baseline": "AT (PGD)", "eval_attack": "pgd20", "seen": True, "gap": 4.0,
         "gap_low": 2.0, "gap_high": 6.0, "p": 1e-5, "seed_p": 0.01, "n_pairs": 2, "n_seeds": 2, "n_points": 500},
    ])
    return pd.DataFrame([gap]), per_attack


def test_gap_table_shows_seed_level_and_model_level_statistics():
    gaps, _ = fixed_gaps()
    tex = gap_table_latex(gaps, "CIFAR-10")
    assert "Related" not in tex.split(r"\midrule")[0]  # no related attack in any row: no related columns
    row = next(line for line in tex.splitlines() if line.startswith("GAIRAT"))
    # per group: accuracy, gap, seed-level p, test-point p of these models
    assert row == (r"GAIRAT (PGD) & AT (PGD) & 60.82 & $+9.68$ & 0.012 & $<0.001$ & 35.40 & $-12.60$ & 0.020 & 0.004 "
                   r"& 32.14 & $-13.98$ & 0.070 & 0.031 \\")
    # under them: the seed-level interval, how many seeds are lower, the bootstrap interval over points
    assert r"{\scriptsize $[4.1, 15.2]$} & {\scriptsize 0/3 lower} & {\scriptsize $[7.1, 12.3]$}" in tex
    assert r"{\scriptsize $[-30.0, 2.0]$} & {\scriptsize 2/3 lower} & {\scriptsize $[-16.5, -11.4]$}" in tex
    assert "3 seeds per row, 3 seeds for the baseline" in tex and "500 test points" in tex
    assert "seen PGD-20, related none, unseen CW-20, AA for GAIRAT (PGD)" in tex and r"\toprule" in tex
    assert "sign-flip" in tex and r"seed\_gap" in tex and "these trained models" in tex
    md = gap_table_markdown(gaps, "CIFAR-10")
    assert ("| GAIRAT (PGD) | AT (PGD) | 60.82 | +9.68 <sub>[4.1, 15.2]</sub> | 0.012 <sub>0/3 lower</sub> | <0.001 "
            "<sub>[7.1, 12.3]</sub> |") in md


def test_gap_table_adds_related_columns_when_a_row_has_related_attacks():
    gaps, _ = fixed_gaps()
    gaps = gaps.assign(related_attacks="apgd-ce", related_acc=50.0, related_gap=-2.0, related_gap_low=-4.0,
                       related_gap_high=0.5, related_p=0.12, related_gap_seed_sd=1.0, related_seed_low=-6.0,
                       related_seed_high=2.0, related_seed_p=0.3, related_seeds_lower=2, related_n_pairs=3)
    md = gap_table_markdown(gaps, "CIFAR-10")
    assert md.splitlines()[0] == (
        "| Method (train attack) | Baseline | Seen | Δ seen | p seeds | p models | Related | Δ related | p seeds "
        "| p models | Unseen mean | Δ unseen mean | p seeds | p models | Unseen worst | Δ unseen worst | p seeds "
        "| p models |")
    assert "| 50.00 | -2.00 <sub>[-6.0, 2.0]</sub> | 0.300 <sub>2/3 lower</sub> | 0.120 <sub>[-4.0, 0.5]</sub> |" in md
    assert "related APGD-CE" in md


def test_attack_gap_table_stars_come_from_the_seed_level_p():
    _, per_attack = fixed_gaps()
    tex = attack_gap_latex(per_attack, "CIFAR-10")
    # stars from seed_p (0.0004 -> ***; 0.2 -> none although the test-point p is 0.001)
    assert r"GAIRAT (PGD) & AT (PGD) & $+9.68^{***\dagger}$ & $-1.00$ \\" in tex
    # 2 seeds: no verdict, no stars (seed_p 0.01 notwithstanding)
    assert r"LRAT (PGD) & AT (PGD) & $+4.00^{\dagger}$ & -- \\" in tex
    assert "averaged over 2--3 seeds per row" in tex and "500 test points" in tex
    md = attack_gap_markdown(per_attack, "CIFAR-10")
    assert r"| +9.68\*\*\* † <sub>[7.1, 12.3]</sub> | -1.00 <sub>[-3.0, 1.0]</sub> |" in md


def test_tex_escape():
    assert tex_escape(r"GAIRAT (PGD) [p_lam=0.0] 5% & #1 {x} \y") == \
        r"GAIRAT (PGD) [p\_lam=0.0] 5\% \& \#1 \{x\} \textbackslash{}y"
    # every LaTeX special character, each escaped once (no escape escaped again)
    assert tex_escape(r"\{}$&#^_%~") == (r"\textbackslash{}\{\}\$\&\#\textasciicircum{}\_\%"
                                         r"\textasciitilde{}")
    assert tex_escape("lr~0.1 x^2") == r"lr\textasciitilde{}0.1 x\textasciicircum{}2"


def test_trades_rows_captions_say_why_ce_attacks_are_related():
    cells = fixed_cells()
    assert "TRADES' KL attack" not in main_table_markdown(cells, "x")
    trades = cells[cells.variant == "AT (PGD)"].assign(variant="TRADES (KL)", method="trades", train_attack="kl")
    md = main_table_markdown(pd.concat([cells, trades]), "x")
    assert "TRADES' KL attack: PGD-20, FGSM and APGD-CE count as related" in md
    tex = main_table_latex(pd.concat([cells, trades]), "x")
    assert "TRADES' KL attack" in tex and "cross-entropy's" in tex
