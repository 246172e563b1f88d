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
from matplotlib.lines import Line2D
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
COLOURS = tuple(matplotlib.colormaps["tab10"].colors)
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D")
# The histograms' first, middle and last reweighted epoch: later is darker and more solid.
EPOCH_STYLES = ({"color": "#9ecae1", "linestyle": ":"}, {"color": "#4292c6", "linestyle": "--"},
                {"color": "#08306b", "linestyle": "-"})
# No creation date in the PDF (matplotlib writes one by default): the same store gives byte-identical figures.
SAVE_METADATA = {"pdf": {"CreationDate": None}, "png": {}}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def series_style(i: int) -> dict:
    """The i-th series' colour, line style and marker: tab10's ten colours solid with round markers, then the same
    colours dashed with squares, dash-dotted with triangles, dotted with diamonds. Two series share a colour only
    with another line style and marker (40 series before any look repeats); the same order gives the same looks."""
    k = (i // len(COLOURS)) % len(LINESTYLES)
    return {"color": COLOURS[i % len(COLOURS)], "linestyle": LINESTYLES[k], "marker": MARKERS[k]}


def _legend_columns(fig: Figure, entries: int) -> int:
    """Columns that keep a legend of `entries` at fontsize 7 within the figure's height."""
    per_column = max(1, int((fig.get_figheight() - 0.5) / 0.17))
    return max(1, math.ceil(entries / per_column))


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.pdf and `stem`.png. The suffixes are appended, never put in place of one (Path.with_suffix):
    a stem may contain a dot, e.g. a budget, and everything after it would be lost. The constrained layout keeps
    every label inside the canvas; bbox_inches="tight" trims the margin around it. Same figure, same bytes."""
    paths = [stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")]
    for p in paths:
        fmt = p.suffix[1:]
        with atomic_output(p) as tmp:  # written whole or not at all; the format from the real name
            fig.savefig(tmp, dpi=150, format=fmt, metadata=SAVE_METADATA[fmt], bbox_inches="tight", pad_inches=0.05)
    return paths


def _row_name(variant: str) -> str:
    """'GAIRAT (PGD) [p_lam=0]' -> 'PGD [p_lam=0]': the training attack part, for a per-method heatmap."""
    rest = variant.split(" ", 1)[1] if " " in variant else variant
    head, _, tail = rest.partition(")")
    return (head.lstrip("(") + tail).strip()


HEATMAP_CELL = 0.5  # inches per column, about: every panel's cells are square, so its height follows its rows


def _heatmap_size(rows: list[int], n_attacks: int, ncols: int) -> tuple[float, list[int], float, float]:
    """(ncols, each grid row's height in heatmap rows, width, height) of a panel grid `ncols` panels wide."""
    tall = [max(rows[i:i + ncols]) for i in range(0, len(rows), ncols)]
    # Rows get a little more height than the width gives a cell (about 0.5 in plus the labels' slack shared by
    # the columns), so the width decides every panel's cell size alike.
    row = 0.6 + 0.6 / n_attacks
    width, height = ncols * (HEATMAP_CELL * n_attacks + 1.5) + 0.4, sum(row * t + 1.35 for t in tall) + 0.8
    return ncols, tall, width, height


def _heatmap_axes(fig: Figure, rows: list[int], n_attacks: int) -> list:
    """One axes per method, up to three to a grid row (as many as bring the figure nearest a 3:2 page, where it
    reads at half a page's width); each grid row as tall as its most-rowed panel, each panel's cells square
    (imshow's equal aspect: a one-row panel stays one row high, top-aligned with its neighbours)."""
    options = [_heatmap_size(rows, n_attacks, k) for k in range(1, min(len(rows), 3) + 1)]
    ncols, tall, width, height = min(options, key=lambda o: abs(math.log(o[2] / o[3] / 1.5)))
    fig.set_size_inches(width, height)
    grid = fig.add_gridspec(len(tall), ncols, height_ratios=tall)
    axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(len(rows))]
    for ax in axes:
        ax.set_anchor("N")
    return axes


def heatmap_figure(cells: pd.DataFrame) -> Figure:
    """One heatmap per method (rows: its training attacks, columns: eval attacks), one shared colour scale."""
    methods = list(dict.fromkeys(cells["method"]))
    attacks = attack_order(cells["eval_attack"].unique())
    fig = _figure(1.0, 1.0)
    axes = _heatmap_axes(fig, [cells.loc[cells["method"] == m, "variant"].nunique() for m in methods], len(attacks))
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
        image = ax.imshow(grid, vmin=lo, vmax=hi, cmap="viridis", aspect="equal")
        ax.set_xticks(range(len(attacks)), [attack_label(a) for a in attacks], rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(variants)), [_row_name(v) for v in variants], fontsize=8)
        ax.set_title(method_label(method))
        ax.set_xlabel("evaluation attack")
        ax.set_ylabel("training\nattack")  # two lines: a one-row panel is shorter than one
    # Below the panels: beside them it would be as short as a one-row panel.
    fig.colorbar(image, ax=axes, label="accuracy (%)", location="bottom", shrink=0.5, aspect=40, panchor=False,
                 fraction=0.25 / fig.get_figheight())  # about a quarter inch high, however tall the panels
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


def gap_kinds(gaps: pd.DataFrame) -> list[tuple[str, str]]:
    """(key, legend label) of the GAP_KINDS some row has a value for: fig_gap's bars and legend, and its caption."""
    return [(key, label) for key, label in GAP_KINDS
            if f"{key}_gap" in gaps and np.isfinite(gaps[f"{key}_gap"].to_numpy(float)).any()]


def gap_figure(gaps: pd.DataFrame, baseline: str) -> Figure:
    """Grouped bars per variant: gap to its baseline on seen, related, unseen (mean) and unseen (worst case)
    attacks, with 95% bootstrap intervals. Missing values (e.g. no seen attack evaluated) draw no bar; a kind
    no row has (e.g. no related attack) takes no slot."""
    fig = _figure(max(5.0, 1.1 * len(gaps) + 2.5), 3.8)
    ax = fig.subplots()
    x = np.arange(len(gaps))
    kinds = gap_kinds(gaps)
    width = 0.8 / max(1, len(kinds))
    for k, (key, label) in enumerate(kinds):
        vals = gaps[f"{key}_gap"].to_numpy(float)
        ok = np.isfinite(vals)
        err = np.vstack([vals - gaps[f"{key}_gap_low"].to_numpy(float), gaps[f"{key}_gap_high"].to_numpy(float) - vals])
        ax.bar(x[ok] + (k - (len(kinds) - 1) / 2) * width, vals[ok], width, yerr=err[:, ok], capsize=3, label=label)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, gaps["variant"].tolist(), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("gap to baseline (accuracy points)")
    ax.set_title(f"Gap to the baseline ({method_label(baseline)}) with 95% intervals", fontsize=10)
    if kinds:
        fig.legend(loc="outside right upper", fontsize=8)  # outside the bars
    else:  # e.g. the only comparison is of unlike attack sets: say so rather than draw an empty legend
        ax.text(0.5, 0.5, "no gap has a value", transform=ax.transAxes, ha="center", va="center", fontsize=9)
    return fig


def history_frame(setting: Setting) -> pd.DataFrame:
    """Per-epoch histories of every run of the setting, tidy: variant, run_id, seed, epoch, val_natural, val_pgd,
    and for reweighted methods w_frac_below_0.2 and w_hist (raw), rw_frac_below_0.2 and rw_hist (relative)."""
    rows = []
    for v in setting.variants:
        for seed, run in zip(v.seeds, v.run_ids):
            rows += [{"variant": v.label, "method": v.method, "run_id": run, "seed": seed, **h}
                     for h in setting.histories.get(run, [])]
    return pd.DataFrame(rows)


def training_history(settings: list[Setting]) -> pd.DataFrame:
    """The histories of every run of a report, each run once however many settings evaluate it: training does
    not depend on the test points. Labels name the dataset and model when the runs have several."""
    frames = [history_frame(s).assign(where=f"{s.dataset}, {s.model}", setting=k) for k, s in enumerate(settings)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    hist = pd.concat(frames, ignore_index=True)
    first = hist.groupby("run_id")["setting"].transform("min")  # a run is drawn from its first setting only
    hist = hist[hist["setting"] == first]
    if hist["where"].nunique() > 1:
        hist = hist.assign(variant=hist["variant"] + ", " + hist["where"])
    return hist.drop(columns=["where", "setting"]).reset_index(drop=True)


def curves_figure(hist: pd.DataFrame) -> Figure:
    """Validation natural and PGD accuracy per epoch: mean over seeds, min-max band when several; one legend
    for both panels, right of them (`series_style`: colour, then line style and marker, tell 40 series apart)."""
    fig = _figure(10.0, 3.6)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (col, label) in zip(axes, (("val_natural", "validation natural accuracy (%)"),
                                       ("val_pgd", "validation PGD-10 accuracy (%)"))):
        for i, (variant, grp) in enumerate(hist.groupby("variant", sort=False)):
            by_epoch = grp.groupby("epoch")[col]
            epochs = by_epoch.mean().index.to_numpy()
            (line,) = ax.plot(epochs, 100 * by_epoch.mean().to_numpy(), label=variant, markersize=3.5,
                              linewidth=1.2, markevery=max(1, len(epochs) // 12), **series_style(i))
            if grp["seed"].nunique() > 1:
                ax.fill_between(epochs, 100 * by_epoch.min().to_numpy(), 100 * by_epoch.max().to_numpy(),
                                color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, ncols=_legend_columns(fig, len(labels)))
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


def _share_panel(ax, rw: pd.DataFrame, variants: list[str], col: str, what: str) -> None:
    """(a): per variant, the share of instances whose weight is below LOW_WEIGHT, per epoch (mean over seeds)."""
    for i, variant in enumerate(variants):
        grp = rw[rw["variant"] == variant].groupby("epoch")[col].mean()
        ax.plot(grp.index.to_numpy(), 100 * grp.to_numpy(), label=variant, markersize=3.5, linewidth=1.2,
                **series_style(i))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"instances with {what}\n< {LOW_WEIGHT} (%)", fontsize=9)
    ax.set_title("(a) share of small weights", fontsize=9)
    ax.set_ylim(0, 100)


def _histogram_panel(ax, grp: pd.DataFrame, variant: str, hist_col: str, edges: list[float], relative: bool) -> None:
    """One variant's weight histogram at its first, middle and last reweighted epoch (counts pooled over
    seeds, in % of instances); the overflow bin drawn one step wide."""
    step = edges[-1] - edges[-2]
    bin_edges = np.array(edges + [round(edges[-1] + step, 1)])
    epochs = _hist_epochs(sorted(grp["epoch"].unique())) if len(grp) else []
    for k, epoch in enumerate(epochs):
        counts = np.sum([np.asarray(h, float) for h in grp.loc[grp["epoch"] == epoch, hist_col]], axis=0)
        role = EPOCH_STYLES[2 if k == len(epochs) - 1 else k]  # the last epoch always the darkest
        ax.stairs(100 * counts / max(counts.sum(), 1), bin_edges, label=f"epoch {epoch}", linewidth=1.2, **role)
    ax.axvline(LOW_WEIGHT, color="grey", linestyle=":", linewidth=0.8)
    if relative:
        ax.axvline(1.0, color="black", linestyle="--", linewidth=0.6)  # the batch mean
        ax.set_xlabel(f"relative weight\n(1 = batch mean; last bin ≥ {edges[-1]:g})", fontsize=9)
    else:
        ax.set_xlabel(f"raw weight (last bin ≥ {edges[-1]:g})", fontsize=9)
    ax.set_ylabel("instances (%)", fontsize=9)
    ax.set_title(f"{variant}\nepoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}", fontsize=8)


def weights_figure(hist: pd.DataFrame) -> Figure | None:
    """(a) share of instances with relative weight < 0.2 per epoch, per reweighted variant (mean over seeds), its
    legend in the panel beside it; then one panel per reweighted variant with its relative-weight histogram at a
    few epochs (counts pooled over seeds; the epochs in its title, their line styles in the legend panel). Raw
    weights instead for old histories (`weights_kind`). None when no run recorded weights."""
    kind = weights_kind(hist)
    if kind is None:
        return None
    relative = kind == "relative"
    prefix, edges, what = ("rw", REL_HIST_EDGES, "relative weight") if relative else ("w", HIST_EDGES, "weight")
    col, hist_col = f"{prefix}_frac_below_{LOW_WEIGHT}", f"{prefix}_hist"
    rw = hist[hist[col].notna()]
    variants = list(dict.fromkeys(rw["variant"]))
    n = 2 + len(variants)  # (a), its legend, the histograms
    ncols = min(n, 4)
    fig = _figure(3.4 * ncols, 2.9 * math.ceil(n / ncols))
    axes = fig.subplots(math.ceil(n / ncols), ncols, squeeze=False).ravel()
    _share_panel(axes[0], rw, variants, col, what)
    _legend_panel(axes[1], *axes[0].get_legend_handles_labels())
    for ax, variant in zip(axes[2:], variants):
        grp = rw[(rw["variant"] == variant) & rw[hist_col].notna()] if hist_col in rw else rw.iloc[:0]
        _histogram_panel(ax, grp, variant, hist_col, edges, relative)
    for ax in axes[n:]:
        ax.remove()
    return fig


def _legend_panel(ax, handles: list, labels: list[str]) -> None:
    """The panel beside (a), no data in it: (a)'s variants at the top, the histograms' epoch styles below."""
    ax.axis("off")
    variants = ax.legend(handles, labels, loc="upper left", fontsize=7, title="(a)", title_fontsize=7,
                         frameon=False, ncols=1 if len(labels) <= 8 else 2)
    ax.add_artist(variants)
    roles = [Line2D([], [], **style) for style in EPOCH_STYLES]
    ax.legend(roles, ["first reweighted epoch", "middle", "last"], loc="lower left", fontsize=7,
              title="histograms", title_fontsize=7, frameon=False)
