"""`bench report`: the tidy results table, a LaTeX table and a plot, from the store. Never imports torch."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.store import Store

log = logging.getLogger(__name__)

ATTACK_ORDER = ["natural", "fgsm", "pgd20", "cw20", "apgd-ce", "apgd-t", "fab-t", "square", "aa", "worst"]
ATTACK_LABELS = {"natural": "Natural", "fgsm": "FGSM", "pgd20": "PGD-20", "cw20": "CW-20", "apgd-ce": "APGD-CE",
                 "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square", "aa": "AA", "worst": "Worst"}
METHOD_LABELS = {"at": "AT", "gairat": "GAIRAT", "mail": "MAIL", "lrat": "LRAT", "lsat": "LSAT"}
TRAIN_ATTACK_LABELS = {"pgd": "PGD", "cw": "CW", "saa": "SAA", "fgsm": "FGSM"}


def load_frame(results: str | Path) -> pd.DataFrame:
    rows = Store(results).load_rows()
    return pd.DataFrame(rows)


def attack_order(attacks) -> list[str]:
    known = [a for a in ATTACK_ORDER if a in set(attacks)]
    return known + sorted(set(attacks) - set(known))


def row_label(method: str, train_attack: str) -> str:
    attacks = "+".join(TRAIN_ATTACK_LABELS.get(a, a) for a in train_attack.split("+"))
    return f"{METHOD_LABELS.get(method, method)} ({attacks})"


@dataclass(frozen=True)
class Selection:
    checkpoint: str = "best"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) mean and std over seeds per (method, train attack) x eval attack."""
    g = df.groupby(["method", "train_attack", "eval_attack"])["accuracy"]
    out = pd.DataFrame({"mean": g.mean() * 100, "std": g.std(ddof=1).fillna(0.0) * 100, "seeds": g.size()})
    return out.reset_index()


def latex_table(df: pd.DataFrame, caption: str) -> str:
    stats = summary_table(df)
    attacks = attack_order(stats["eval_attack"].unique())
    rows = stats[["method", "train_attack"]].drop_duplicates().values.tolist()
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             r"\begin{tabular}{l" + "r" * len(attacks) + "}", r"\toprule",
             "Method (train attack) & " + " & ".join(ATTACK_LABELS.get(a, a) for a in attacks) + r" \\",
             r"\midrule"]
    for method, train_attack in rows:
        cells = []
        for a in attacks:
            hit = stats[(stats.method == method) & (stats.train_attack == train_attack) & (stats.eval_attack == a)]
            if hit.empty:
                cells.append("--")
                continue
            mean, std, seeds = hit.iloc[0][["mean", "std", "seeds"]]
            cells.append(f"{mean:.2f}" + (rf" $\pm$ {std:.2f}" if seeds > 1 else ""))
        lines.append(f"{row_label(method, train_attack)} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def bar_plot(df: pd.DataFrame, path_stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summary_table(df)
    attacks = attack_order(stats["eval_attack"].unique())
    groups = stats[["method", "train_attack"]].drop_duplicates().values.tolist()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(attacks) + 2), 3.5))
    width = 0.8 / max(len(groups), 1)
    for i, (method, train_attack) in enumerate(groups):
        sub = stats[(stats.method == method) & (stats.train_attack == train_attack)].set_index("eval_attack")
        means = [sub["mean"].get(a, float("nan")) for a in attacks]
        errs = [sub["std"].get(a, 0.0) for a in attacks]
        ax.bar([j + i * width for j in range(len(attacks))], means, width, yerr=errs,
               label=row_label(method, train_attack), capsize=2)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(attacks))])
    ax.set_xticklabels([ATTACK_LABELS.get(a, a) for a in attacks])
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("evaluation attack")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = [path_stem.with_suffix(".pdf"), path_stem.with_suffix(".png")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def write_report(results: str | Path, out: str | Path, selection: Selection = Selection()) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_frame(results)
    if df.empty:
        raise FileNotFoundError(f"No finished runs in {results}: run `bench run` first.")
    written = {"csv": out / "results.csv"}
    df.sort_values(["method", "train_attack", "seed", "checkpoint", "eval_attack"]).to_csv(written["csv"], index=False)
    sel = df[(df.checkpoint == selection.checkpoint) & (df.threat_model == "linf")]
    n_eval = ", ".join(str(n) for n in sorted(sel.n_eval.unique()))
    caption = (f"Accuracy (\\%) on {', '.join(sorted(sel.dataset.unique()))}, {selection.checkpoint} checkpoint, "
               f"$\\epsilon$ = {', '.join(f'{e:.4g}' for e in sorted(sel.eval_eps.unique()))}, "
               f"{sel.seed.nunique()} seed(s), {n_eval} test points.")
    written["tex"] = out / "table.tex"
    written["tex"].write_text(latex_table(sel, caption))
    written["png"], written["pdf"] = bar_plot(sel, out / "accuracy")[::-1]
    return written
