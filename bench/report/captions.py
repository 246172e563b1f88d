"""Figure captions of `bench report`, each as LaTeX (report.tex) and plain text (summary.md, report.html) twins.
A caption states only what its figure shows: the markers, gap kinds and seed counts present, a mean only where
a row has several seeds; the training figures (once per report) name no test points."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

import bench.report.plots as plots
from bench.report.frame import Setting, method_label
from bench.report.tables import count_text


def _symbols(tex: bool) -> dict[str, str]:
    if tex:
        return {"pct": r"\%", "dagger": r"$\dagger$", "ddagger": r"$\ddagger$", "fig": "Fig.~", "geq": r"$\geq$"}
    return {"pct": "%", "dagger": "†", "ddagger": "‡", "fig": "Fig. ", "geq": "≥"}


def _count(values: Sequence[int], noun: str, tex: bool) -> str:
    text = count_text([int(v) for v in values], noun)
    return text if tex else text.replace("--", "–")


def over_seeds(counts: Sequence[int], tex: bool, what: str = "row") -> str:
    """'one seed per row' when no row has more (nothing is averaged), else 'mean over 2-3 seeds per row'."""
    if max(counts) <= 1:
        return f"one seed per {what}"
    return f"mean over {_count(counts, 'seed', tex)} per {what}"


def _marks(relations: pd.Series, tex: bool) -> str:
    """'†: seen attack, ‡: related attack. ' for the markers the figure draws; '' when none."""
    s = _symbols(tex)
    present = set(relations.dropna())
    parts = [f"{s[m]}: {r} attack" for r, m in (("seen", "dagger"), ("related", "ddagger")) if r in present]
    return (", ".join(parts) + ". ") if parts else ""


def heatmap_caption(setting: Setting, cells: pd.DataFrame, tex: bool) -> str:
    s, seeds = _symbols(tex), cells.groupby("variant")["n_seeds"].max().tolist()
    attacked = set(cells["eval_attack"]) - {"natural"}
    scale = "The colour scale spans the attacked columns" + ("; natural accuracy saturates it." if attacked and
                                                             "natural" in set(cells["eval_attack"]) else ".")
    return (f"Accuracy ({s['pct']}) per training attack (rows) and evaluation attack (columns), one panel per "
            f"method, {over_seeds(seeds, tex)}, on {setting.describe(tex)}. {_marks(cells.get('relation', pd.Series()), tex)}"
            f"{scale}")


def rank_caption(setting: Setting, cells: pd.DataFrame, tex: bool) -> str:
    s, seeds = _symbols(tex), cells.groupby("variant")["n_seeds"].max().tolist()
    unranked = [name for attack, name in (("natural", "Natural accuracy"), ("worst", "the per-example worst case"))
                if attack in set(cells["eval_attack"])]
    note = f" {' and '.join(unranked)} {'are' if len(unranked) > 1 else 'is'} not ranked." if unranked else ""
    ranked = cells[~cells["eval_attack"].isin(["natural", "worst"])]
    return (f"Which evaluation attack is strongest depends on the training (the LRAT paper's {s['fig']}2): for each "
            f"method and training attack (rows), the evaluation attacks (columns) ranked by the accuracy they leave, "
            f"rank 1 = the strongest attack (the lowest accuracy), ties sharing the lower rank. Each cell: the rank "
            f"and the accuracy ({s['pct']}), {over_seeds(seeds, tex)}, on the {setting.n_points:,} test points."
            f"{note} {_marks(ranked.get('relation', pd.Series()), tex)}{setting.describe(tex)}.")


def gap_caption(setting: Setting, gaps: pd.DataFrame, tex: bool) -> str:
    s = _symbols(tex)
    labels = [label for _, label in plots.gap_kinds(gaps)]  # the legend's entries, in its order
    kinds = ", ".join(labels[:-1]) + (" and " if len(labels) > 1 else "") + labels[-1] if labels else "no attack"
    pairs = gaps["n_seeds"].tolist()
    runs = ("one seed-matched pair of runs per row" if max(pairs) <= 1
            else f"mean over {_count(pairs, 'seed-matched pair', tex)} of runs per row")
    return (f"Gap to the baseline ({method_label(setting.baseline)}) in accuracy points on {kinds}, {runs}; "
            f"bars: 95{s['pct']} bootstrap intervals over the {setting.n_points:,} test points. "
            f"{setting.describe(tex)}.")


def curves_caption(hist: pd.DataFrame, tex: bool) -> str:
    seeds = hist.groupby("variant")["seed"].nunique().tolist()
    band = " (band: min to max over the seeds)" if max(seeds) > 1 else ""
    return (f"Training curves, once for the report's runs (training, not an evaluation): natural and PGD-10 "
            f"accuracy on each run's validation split after each epoch, {over_seeds(seeds, tex, 'line')}{band}.")


def weights_caption(hist: pd.DataFrame, tex: bool) -> str:
    s = _symbols(tex)
    weighted = hist[hist[f"w_frac_below_{plots.LOW_WEIGHT}"].notna()]
    seeds = weighted.groupby("variant")["seed"].nunique().tolist()
    if plots.weights_kind(hist) == "relative":
        what = ("relative weight (an instance's total weight over its loss terms divided by the batch mean of "
                "totals: 1 = the batch mean; LRAT: anchor and variant coefficients summed)")
        last = f"relative weights {s['geq']} 3"
    else:
        what = ("raw weight (these histories predate relative weights: GAIRAT's are relative already, MAIL's are "
                "not batch-normalised, LRAT's are its variant coefficients)")
        last = f"weights {s['geq']} 4"
    pooled = "one seed" if max(seeds) <= 1 else f"pooled over {_count(seeds, 'seed', tex)}"
    return (f"Instance weights of the reweighted methods over training (the LRAT paper's {s['fig']}1a from our "
            f"runs; a training plot, once for the report), as {what}: (a) share of instances below "
            f"{plots.LOW_WEIGHT} per epoch, {over_seeds(seeds, tex, 'line')}; then per method its histogram at the "
            f"first, middle and last reweighted epoch (named in the panel's title), {pooled} (last bin: {last}).")
