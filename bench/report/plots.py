"""Figures of `bench report` (matplotlib, Agg canvas, saved as PDF and PNG). Each builder returns a Figure
so tests can inspect its axes, labels, bars and cells; `save` writes and releases it. No pyplot: no global
figure state in library code.

- heatmap: per method, training attack x eval attack accuracy (mean over seeds);
- attack rank: per row (method, training attack), the eval attacks ranked by the accuracy they leave (1 = the
  strongest), the LRAT paper's Fig. 2 (the ranks come from bench/report/stats.py: `attack_ranks`);
- gap: seen and unseen-attack gaps to the baseline as bars with 95% interval bars;
- curves: validation natural and PGD accuracy per epoch (mean over seeds, min-max band);
- weights: share of instances with relative weight < 0.2 per epoch and relative-weight histograms at a few
  epochs, for reweighted methods: the LRAT paper's Fig. 1a from our runs. Relative weight = an instance's total
  weight / the batch mean of totals (1 = the batch mean; `rw_*` in history.json); histories written before it
  existed carry only the raw weights (`w_*`), which are drawn instead (`weights_kind` says which).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.report.frame import Setting, atomic_output, attack_label, attack_order, method_label

# Copied from bench/train.py (which imports torch): weight-histogram bin edges, raw 0.0, 0.2, ..., 4.0 and
# relative 0.0, 0.1, ..., 3.0, each plus one overflow bin [last edge, inf) in the stored counts; and the LRAT
# paper's Fig. 1a threshold.
HIST_EDGES = [round(0.2 * i, 1) for i in range(21)]
REL_HIST_EDGES = [round(0.1 * i, 1) for i in range(31)]
LOW_WEIGHT = 0.2
GAP_KINDS = (("seen", "seen attacks"), ("related", "related attacks"), ("unseen_mean", "unseen attacks (mean)"),
             ("unseen_worst", "unseen attacks (worst case)"))


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.pdf and `stem`.png. The suffixes are appended, never put in place of one (Path.with_suffix):
    a stem may contain a dot, e.g. a budget, and everything after it would be lost."""
    paths = [stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")]
    for p in paths:
        with atomic_output(p) as tmp:  # written whole or not at all; the format from the real name
            fig.savefig(tmp, dpi=150, format=p.suffix[1:])
    return paths


def _row_name(variant: str) -> str:
    """'GAIRAT (PGD) [p_lam=0]' -> 'PGD [p_lam=0]': the training attack part, for a per-method heatmap."""
    rest = variant.split(" ", 1)[1] if " " in variant else variant
    head, _, tail = rest.partition(")")
    return (head.lstrip("(") + tail).strip()


def heatmap_figure(cells: pd.DataFrame) -> Figure:
    """One heatmap per method (rows: its training attacks, columns: eval attacks), one shared colour scale."""
    methods = list(dict.fromkeys(cells["method"]))
    attacks = attack_order(cells["eval_attack"].unique())
    ncols = min(len(methods), 3)
    nrows = math.ceil(len(methods) / ncols)
    rows_max = max(cells.groupby("method")["variant"].nunique())
    fig = _figure(ncols * (0.62 * len(attacks) + 1.6) + 1.0, nrows * (0.45 * rows_max + 1.9))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    # The colour scale spans the attacked columns: natural accuracy, far above, would flatten their contrast
    # (natural cells saturate; their numbers are printed in them).
    attacked = cells.loc[cells["eval_attack"] != "natural", "mean"]
    scale = attacked if len(attacked) else cells["mean"]
    lo, hi = math.floor(scale.min()), math.ceil(scale.max())
    hi = max(hi, lo + 1)  # a constant table (e.g. all 0%) still needs a non-empty range
    image = None
    for ax, method in zip(axes, methods):
        sub = cells[cells["method"] == method]
        variants = list(dict.fromkeys(sub["variant"]))
        grid = np.full((len(variants), len(attacks)), np.nan)
        for c in sub.to_dict("records"):
            i, j = variants.index(c["variant"]), attacks.index(c["eval_attack"])
            grid[i, j] = c["mean"]
            shade = min(1.0, (c["mean"] - lo) / max(hi - lo, 1e-9))
            mark = {"seen": "†", "related": "‡"}.get(c.get("relation", ""), "")
            ax.text(j, i, f"{c['mean']:.1f}{mark}", ha="center", va="center", fontsize=7,
                    color="black" if shade > 0.6 else "white")
        image = ax.imshow(grid, vmin=lo, vmax=hi, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(attacks)), [attack_label(a) for a in attacks], rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(variants)), [_row_name(v) for v in variants], fontsize=8)
        ax.set_title(method_label(method))
        ax.set_xlabel("evaluation attack")
        ax.set_ylabel("training attack")
    for ax in axes[len(methods):]:
        ax.remove()
    fig.colorbar(image, ax=list(axes[:len(methods)]), label="accuracy (%)", shrink=0.9)
    return fig


RANK_CMAP = "YlOrRd_r"  # sequential: rank 1 (the strongest attack) the darkest red, the weakest pale yellow


def attack_rank_figure(ranks: pd.DataFrame) -> Figure:
    """One grid: rows = variants (in `ranks`' order, the report's), columns = eval attacks (the catalog's order),
    colour = rank (one colour per rank, a discrete colour bar: 1 = strongest), each cell annotated with its rank
    and accuracy (%), † on seen and ‡ on related attacks. A variant without an attack leaves its cell blank.
    `ranks`: `bench.report.stats.attack_ranks`."""
    variants = list(dict.fromkeys(ranks["variant"]))
    attacks = attack_order(ranks["eval_attack"].unique())
    n = max(len(attacks), 1)
    fig = _figure(0.85 * len(attacks) + 0.07 * max(map(len, variants), default=0) + 2.6, 0.42 * len(variants) + 1.9)
    ax = fig.subplots()
    cmap = matplotlib.colormaps[RANK_CMAP].resampled(n)
    norm = BoundaryNorm(np.arange(0.5, n + 1.0), cmap.N)
    grid = np.full((len(variants), len(attacks)), np.nan)
    for r in ranks.to_dict("records"):
        i, j = variants.index(r["variant"]), attacks.index(r["eval_attack"])
        grid[i, j] = r["rank"]
        red, green, blue, _ = cmap(norm(r["rank"]))
        mark = {"seen": "†", "related": "‡"}.get(r.get("relation", ""), "")
        ax.text(j, i, f"{int(r['rank'])}\n{r['accuracy']:.1f}%{mark}", ha="center", va="center", fontsize=7,
                color="white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(attacks)), [attack_label(a) for a in attacks], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.set_xlabel("evaluation attack")
    ax.set_ylabel("method (training attack)")
    ax.set_title("Rank of each evaluation attack per row (1 = strongest)", fontsize=9)
    bar = fig.colorbar(image, ax=ax, ticks=range(1, n + 1), shrink=0.9)
    bar.set_label("rank (1 = strongest: lowest accuracy)", fontsize=8)
    return fig


def gap_figure(gaps: pd.DataFrame, baseline: str) -> Figure:
    """Grouped bars per variant: gap to its baseline on seen, related, unseen (mean) and unseen (worst case)
    attacks, with 95% bootstrap intervals. Missing values (e.g. no seen attack evaluated) draw no bar; a kind
    no row has (e.g. no related attack) takes no slot."""
    fig = _figure(max(5.0, 1.1 * len(gaps) + 2.5), 3.8)
    ax = fig.subplots()
    x = np.arange(len(gaps))
    kinds = [(key, label) for key, label in GAP_KINDS
             if f"{key}_gap" in gaps and np.isfinite(gaps[f"{key}_gap"].to_numpy(float)).any()]
    width = 0.8 / max(1, len(kinds))
    for k, (key, label) in enumerate(kinds):
        vals = gaps[f"{key}_gap"].to_numpy(float)
        ok = np.isfinite(vals)
        err = np.vstack([vals - gaps[f"{key}_gap_low"].to_numpy(float), gaps[f"{key}_gap_high"].to_numpy(float) - vals])
        ax.bar(x[ok] + (k - (len(kinds) - 1) / 2) * width, vals[ok], width, yerr=err[:, ok], capsize=3, label=label)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, gaps["variant"].tolist(), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("gap to baseline (accuracy points)")
    ax.set_title(f"Gap to the baseline ({method_label(baseline)}) with 95% intervals")
    ax.legend(fontsize=8)
    return fig


def history_frame(setting: Setting) -> pd.DataFrame:
    """Per-epoch histories of every run of the setting, tidy: variant, seed, epoch, val_natural, val_pgd,
    and for reweighted methods w_frac_below_0.2 and w_hist (raw), rw_frac_below_0.2 and rw_hist (relative)."""
    rows = []
    for v in setting.variants:
        for seed, run in zip(v.seeds, v.run_ids):
            rows += [{"variant": v.label, "method": v.method, "seed": seed, **h}
                     for h in setting.histories.get(run, [])]
    return pd.DataFrame(rows)


def curves_figure(hist: pd.DataFrame) -> Figure:
    """Validation natural and PGD accuracy per epoch: mean over seeds, min-max band when several."""
    fig = _figure(10.0, 3.6)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (col, label) in zip(axes, (("val_natural", "validation natural accuracy (%)"),
                                       ("val_pgd", "validation PGD-10 accuracy (%)"))):
        for variant, grp in hist.groupby("variant", sort=False):
            by_epoch = grp.groupby("epoch")[col]
            epochs = by_epoch.mean().index.to_numpy()
            (line,) = ax.plot(epochs, 100 * by_epoch.mean().to_numpy(), marker=".", label=variant)
            if grp["seed"].nunique() > 1:
                ax.fill_between(epochs, 100 * by_epoch.min().to_numpy(), 100 * by_epoch.max().to_numpy(),
                                color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7, loc="best")
    return fig


def _hist_epochs(epochs: list[int]) -> list[int]:
    """First, middle and last reweighted epoch (fewer when there are fewer)."""
    return list(dict.fromkeys([epochs[0], epochs[len(epochs) // 2], epochs[-1]]))


def weights_kind(hist: pd.DataFrame) -> str | None:
    """'relative' when every reweighted epoch of the histories carries relative weights (rw_*), 'raw' when some
    do not (histories written before they existed: the raw w_* are drawn for all, never a mix), None when no
    run recorded weights (AT, or burn-in only)."""
    raw, rel = f"w_frac_below_{LOW_WEIGHT}", f"rw_frac_below_{LOW_WEIGHT}"
    if raw not in hist or hist[raw].isna().all():
        return None
    rows = hist[hist[raw].notna()]
    return "relative" if rel in rows and rows[rel].notna().all() else "raw"


def weights_figure(hist: pd.DataFrame) -> Figure | None:
    """(a) share of instances with relative weight < 0.2 per epoch, per reweighted variant (mean over seeds),
    and one panel per reweighted variant with its relative-weight histogram at a few epochs (counts pooled over
    seeds). Raw weights instead for old histories (`weights_kind`). None when no run recorded weights."""
    kind = weights_kind(hist)
    if kind is None:
        return None
    relative = kind == "relative"
    prefix, edges, what = ("rw", REL_HIST_EDGES, "relative weight") if relative else ("w", HIST_EDGES, "weight")
    col, hist_col = f"{prefix}_frac_below_{LOW_WEIGHT}", f"{prefix}_hist"
    rw = hist[hist[col].notna()]
    variants = list(dict.fromkeys(rw["variant"]))
    n = 1 + len(variants)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.4 * ncols, 2.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    share = axes[0]
    for variant in variants:
        grp = rw[rw["variant"] == variant].groupby("epoch")[col].mean()
        share.plot(grp.index.to_numpy(), 100 * grp.to_numpy(), marker=".", label=variant)
    share.set_xlabel("epoch")
    share.xaxis.set_major_locator(MaxNLocator(integer=True))
    share.set_ylabel(f"instances with {what} < {LOW_WEIGHT} (%)")
    share.set_title("(a) share of small weights", fontsize=9)
    share.set_ylim(0, 100)
    share.legend(fontsize=6)
    step = edges[-1] - edges[-2]
    bin_edges = np.array(edges + [round(edges[-1] + step, 1)])  # the overflow bin drawn one step wide
    for ax, variant in zip(axes[1:], variants):
        grp = rw[(rw["variant"] == variant) & rw[hist_col].notna()] if hist_col in rw else rw.iloc[:0]
        for epoch in _hist_epochs(sorted(grp["epoch"].unique())) if len(grp) else []:
            counts = np.sum([np.asarray(h, float) for h in grp.loc[grp["epoch"] == epoch, hist_col]], axis=0)
            ax.stairs(100 * counts / max(counts.sum(), 1), bin_edges, label=f"epoch {epoch}")
        ax.axvline(LOW_WEIGHT, color="grey", linestyle=":", linewidth=0.8)
        if relative:
            ax.axvline(1.0, color="black", linestyle="--", linewidth=0.6)  # the batch mean
            ax.set_xlabel(f"relative weight (1 = batch mean; last bin: ≥ {edges[-1]:g})")
        else:
            ax.set_xlabel(f"raw weight (last bin: ≥ {edges[-1]:g})")
        ax.set_ylabel("instances (%)")
        ax.set_title(variant, fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes[n:]:
        ax.remove()
    return fig
