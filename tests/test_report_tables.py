"""Tables: a golden LaTeX string for a small fixed DataFrame (bold best, ± std, seen mark, caption counts),
its Markdown twin, and the gap tables' p-values and intervals."""
from __future__ import annotations

import math

import pandas as pd

from bench.report_tables import (attack_gap_latex, attack_gap_markdown, gap_table_latex, gap_table_markdown,
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
        ("LRAT (CW)", "lrat", "cw", "natural", False, 79.65, NAN, 76.1, 83.2, 1),
        ("LRAT (CW)", "lrat", "cw", "aa", False, 46.1249, NAN, 43.0, 49.3, 1),  # ties AT's 46.12 as printed
    ]
    cols = ["variant", "method", "train_attack", "eval_attack", "seen", "mean", "std", "ci_low", "ci_high", "n_seeds"]
    return pd.DataFrame(rows, columns=cols).assign(n_points=500)


GOLDEN = r"""\begin{table}[htbp]
\centering
\small
\caption{Accuracy (\%) on CIFAR-10, ResNet-18: mean $\pm$ std over 1--3 seeds per row, below it the 95\% bootstrap interval over the 500 test points. Bold: best in each column. $^\dagger$: the evaluation attack was simulated in training (seen).}
\label{tab:main}
\begin{tabular}{lrrr}
\toprule
Method (train attack) & Natural & PGD-20 & AA \\
\midrule
AT (PGD) & \textbf{83.17} $\pm$ 0.50 & 51.14 $\pm$ 1.25$^\dagger$ & \textbf{46.12} $\pm$ 0.30 \\
 & {\scriptsize $[80.0, 86.0]$} & {\scriptsize $[48.0, 54.3]$} & {\scriptsize $[43.6, 48.5]$} \\
GAIRAT (PGD) & 79.69 $\pm$ 0.75 & \textbf{60.82} $\pm$ 2.00$^\dagger$ & 32.14 $\pm$ 1.00 \\
 & {\scriptsize $[76.0, 83.0]$} & {\scriptsize $[57.1, 64.4]$} & {\scriptsize $[29.0, 35.2]$} \\
LRAT (CW) & 79.65 & -- & \textbf{46.12} \\
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
    assert lines[4] == "| LRAT (CW) | 79.65 <sub>[76.1, 83.2]</sub> | -- | **46.12** <sub>[43.0, 49.3]</sub> |"
    assert "1–3 seeds per row" in md and "500 test points" in md and "†: the evaluation attack" in md


def fixed_gaps() -> tuple[pd.DataFrame, pd.DataFrame]:
    gap = {"variant": "GAIRAT (PGD)", "method": "gairat", "train_attack": "pgd", "baseline": "AT (PGD)",
           "seen_attacks": "pgd20", "unseen_attacks": "cw20,aa", "n_seeds": 2, "n_baseline_seeds": 3, "n_points": 500}
    for key, acc, g, lo, hi, p in (("seen", 60.82, 9.68, 7.1, 12.3, 2e-6), ("unseen_mean", 35.4, -12.6, -15.0, -10.2, NAN),
                                   ("unseen_worst", 32.14, -13.98, -16.5, -11.4, 0.0312)):
        gap.update({f"{key}_acc": acc, f"{key}_gap": g, f"{key}_gap_low": lo, f"{key}_gap_high": hi, f"{key}_p": p})
    per_attack = pd.DataFrame([
        {"variant": "GAIRAT (PGD)", "baseline": "AT (PGD)", "eval_attack": "pgd20", "seen": True, "gap": 9.68,
         "gap_low": 7.1, "gap_high": 12.3, "p": 2e-6, "n_seeds": 2, "n_points": 500},
        {"variant": "GAIRAT (PGD)", "baseline": "AT (PGD)", "eval_attack": "cw20", "seen": False, "gap": -1.0,
         "gap_low": -3.0, "gap_high": 1.0, "p": 0.2, "n_seeds": 2, "n_points": 500},
    ])
    return pd.DataFrame([gap]), per_attack


def test_gap_table_shows_gaps_intervals_and_p_values():
    gaps, _ = fixed_gaps()
    tex = gap_table_latex(gaps, "CIFAR-10")
    row = next(line for line in tex.splitlines() if line.startswith("GAIRAT"))
    assert row == (r"GAIRAT (PGD) & AT (PGD) & 60.82 & $+9.68$ & $<0.001$ & 35.40 & $-12.60$ & 32.14 & $-13.98$ "
                   r"& 0.031 \\")
    assert r"{\scriptsize $[7.1, 12.3]$}" in tex and r"{\scriptsize $[-16.5, -11.4]$}" in tex
    assert "2 seeds per row and 3 seeds for the baseline" in tex and "500 test points" in tex
    assert "seen PGD-20, unseen CW-20, AA for GAIRAT (PGD)" in tex and r"\toprule" in tex
    md = gap_table_markdown(gaps, "CIFAR-10")
    assert "| GAIRAT (PGD) | AT (PGD) | 60.82 | +9.68 <sub>[7.1, 12.3]</sub> | <0.001 |" in md


def test_attack_gap_table_marks_significance_and_seen():
    _, per_attack = fixed_gaps()
    tex = attack_gap_latex(per_attack, "CIFAR-10")
    assert r"GAIRAT (PGD) & AT (PGD) & $+9.68^{***\dagger}$ & $-1.00$ \\" in tex
    assert "averaged over 2 seeds per row" in tex and "500 test points" in tex
    md = attack_gap_markdown(per_attack, "CIFAR-10")
    assert r"| +9.68\*\*\* † <sub>[7.1, 12.3]</sub> | -1.00 <sub>[-3.0, 1.0]</sub> |" in md


def test_tex_escape():
    assert tex_escape(r"GAIRAT (PGD) [p_lam=0.0] 5% & #1 {x} \y") == \
        r"GAIRAT (PGD) [p\_lam=0.0] 5\% \& \#1 \{x\} \textbackslash{}y"
