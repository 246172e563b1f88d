"""Plots: the files exist, and the matplotlib objects have the expected axes, labels, bars and cells."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle, StepPatch

import bench.report.plots as plots
from bench.report import Selection, load_frame
from bench.report.frame import baseline_for, build_settings, select
from bench.report.stats import attack_ranks, cell_stats, gap_stats
from bench.store import Store


@pytest.fixture(scope="module")
def setting(tmp_path_factory, paper_store):
    root = tmp_path_factory.mktemp("store")
    store = paper_store(root, seeds=(0, 1), n=60)
    chosen, pool = select(load_frame(root), Selection())
    (s,) = build_settings(store, chosen, pool, Selection())
    return s


@pytest.fixture(scope="module")
def tables(setting):
    baselines = [v for v in setting.variants if v.method == "at"]
    gaps, _ = gap_stats(setting, lambda v: baseline_for(v, baselines))
    return cell_stats(setting), gaps


def test_heatmap_one_panel_per_method_with_every_cell(tables):
    cells, _ = tables
    fig = plots.heatmap_figure(cells)
    panels = [ax for ax in fig.axes if any(isinstance(i, AxesImage) for i in ax.images) and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["AT", "GAIRAT", "LRAT"]
    for ax, method in zip(panels, ["at", "gairat", "lrat"]):
        grid = ax.images[0].get_array()
        assert grid.shape == (1, 5)  # one training attack x (natural, pgd20, cw20, aa, worst)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["Natural", "PGD-20", "CW-20", "AA", "Worst"]
        assert ax.get_xlabel() == "evaluation attack" and ax.get_ylabel() == "training attack"
        sub = cells[cells.method == method].set_index("eval_attack")
        assert grid[0, 1] == pytest.approx(sub.loc["pgd20", "mean"])
        texts = [t.get_text() for t in ax.texts]
        assert len(texts) == 5 and sum(t.endswith("†") for t in texts) == 1  # exactly one seen cell
    assert any(ax.get_ylabel() == "accuracy (%)" for ax in fig.axes)  # the shared colour bar


def test_heatmap_colour_scale_is_shared_and_never_empty(tables):
    cells, _ = tables
    flat = cells.assign(mean=cells["mean"].where(cells["eval_attack"] == "natural", 0.0))  # every attack at 0%
    fig = plots.heatmap_figure(flat)
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert limits == {(0.0, 1.0)}  # one scale for every panel; natural (~80%) saturates it


def test_attack_ranks_oracle_with_ties_and_no_natural_or_worst():
    """Hand-made cells, in no particular order: per variant, rank 1 = the lowest accuracy, ties share the lower
    rank (method="min"), natural and worst never ranked; equal means summed in another order (20.000000000000004
    and 20.0) tie; rows keep the cells' variant order, columns the catalog's attack order."""
    cells = pd.DataFrame([
        ("B (PGD)", "cw20", 45.0), ("B (PGD)", "natural", 10.0), ("B (PGD)", "aa", 35.0), ("B (PGD)", "pgd20", 30.0),
        ("A (CW)", "worst", 5.0), ("A (CW)", "aa", 40.0), ("A (CW)", "pgd20", 50.0), ("A (CW)", "cw20", 40.0),
        ("A (CW)", "natural", 90.0), ("B (PGD)", "worst", 1.0),
        ("C (PGD)", "aa", 25.0), ("C (PGD)", "pgd20", 100 * np.mean([0.1, 0.2, 0.3])),
        ("C (PGD)", "cw20", 100 * np.mean([0.3, 0.2, 0.1])),
    ], columns=["variant", "eval_attack", "mean"])
    assert cells.loc[11, "mean"] != cells.loc[12, "mean"]  # the float sums differ in the last bit
    ranks = attack_ranks(cells)
    assert list(ranks.columns) == ["variant", "eval_attack", "accuracy", "rank"]
    got = [(r.variant, r.eval_attack, r.rank) for r in ranks.itertuples()]
    assert got == [("B (PGD)", "pgd20", 1), ("B (PGD)", "cw20", 3), ("B (PGD)", "aa", 2),
                   ("A (CW)", "pgd20", 3), ("A (CW)", "cw20", 1), ("A (CW)", "aa", 1),
                   ("C (PGD)", "pgd20", 1), ("C (PGD)", "cw20", 1), ("C (PGD)", "aa", 3)]
    assert ranks["accuracy"].tolist() == pytest.approx([30, 45, 35, 50, 40, 40, 20, 20, 25])
    assert attack_ranks(cells[cells.eval_attack.isin(["natural", "worst"])]).empty  # nothing to rank


def test_attack_rank_figure_one_cell_per_variant_and_attack(tables, tmp_path):
    cells, _ = tables
    ranks = attack_ranks(cells)
    assert list(ranks.columns) == ["variant", "method", "train_attack", "eval_attack", "relation", "accuracy", "rank",
                                   "n_seeds", "n_points"]
    fig = plots.attack_rank_figure(ranks)
    ax = next(a for a in fig.axes if a.images and a.get_title())
    grid = ax.images[0].get_array()
    assert grid.shape == (3, 3)  # AT, GAIRAT, LRAT x PGD-20, CW-20, AA (natural and worst not ranked)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["PGD-20", "CW-20", "AA"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["AT (PGD)", "GAIRAT (PGD)", "LRAT (CW)"]
    expected = ranks.pivot(index="variant", columns="eval_attack", values="rank").loc[
        ["AT (PGD)", "GAIRAT (PGD)", "LRAT (CW)"], ["pgd20", "cw20", "aa"]].to_numpy()
    assert np.array_equal(np.asarray(grid), expected)
    for r, text in zip(ranks.itertuples(), [t.get_text() for t in ax.texts]):
        assert text.startswith(f"{r.rank}\n{r.accuracy:.1f}%")  # rank and mean accuracy in each cell
    assert sum(t.get_text().endswith("†") for t in ax.texts) == 3  # each row's seen attack
    assert any(a.get_ylabel() == "rank (1 = strongest: lowest accuracy)" for a in fig.axes)  # the colour bar
    pdf, png = plots.save(fig, tmp_path / "rank")
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gap_bars_with_intervals_and_missing_values(tables, tmp_path):
    _, gaps = tables
    fig = plots.gap_figure(gaps, "at")
    (ax,) = fig.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    values = gaps[[f"{k}_gap" for k, _ in plots.GAP_KINDS]].to_numpy(float)
    kinds = int(np.isfinite(values).any(axis=0).sum())
    assert kinds == 3  # seen, unseen mean, unseen worst: no related attack in the fixture, so no related slot
    assert len(bars) == np.isfinite(values).sum() == kinds * len(gaps)
    heights = sorted(b.get_height() for b in bars)
    assert heights == pytest.approx(sorted(values[np.isfinite(values)]))
    assert ax.get_ylabel() == "gap to baseline (accuracy points)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["GAIRAT (PGD)", "LRAT (CW)"]
    bar_groups = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bar_groups) == kinds and all(c.errorbar is not None for c in bar_groups)  # interval bars on each
    partial = gaps.copy()
    partial.loc[0, "seen_gap"] = math.nan  # e.g. the seen attack was not evaluated
    assert len(plots.gap_figure(partial, "at").axes[0].patches) == len(bars) - 1
    pdf, png = plots.save(fig, tmp_path / "gap")
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves(setting):
    hist = plots.history_frame(setting)
    fig = plots.curves_figure(hist)
    nat, pgd = fig.axes
    assert nat.get_ylabel() == "validation natural accuracy (%)" and pgd.get_ylabel() == "validation PGD-10 accuracy (%)"
    assert nat.get_xlabel() == "epoch"
    assert [line.get_label() for line in pgd.get_lines()] == ["AT (PGD)", "GAIRAT (PGD)", "LRAT (CW)"]
    at = hist[hist.variant == "AT (PGD)"].groupby("epoch")["val_pgd"].mean()
    x, y = pgd.get_lines()[0].get_data()
    assert list(x) == [1, 2, 3] and np.allclose(y, 100 * at.to_numpy())
    assert len(nat.collections) == 3  # a min-max band per variant (two seeds each)


def test_weights_figure_share_and_histograms(setting):
    hist = plots.history_frame(setting)
    fig = plots.weights_figure(hist)
    share, *panels = fig.axes
    assert share.get_ylabel() == "instances with weight < 0.2 (%)"
    assert [line.get_label() for line in share.get_lines()] == ["GAIRAT (PGD)", "LRAT (CW)"]  # AT has no weights
    x, y = share.get_lines()[0].get_data()
    g = hist[(hist.variant == "GAIRAT (PGD)") & hist["w_frac_below_0.2"].notna()].groupby("epoch")["w_frac_below_0.2"]
    assert list(x) == [2, 3] and np.allclose(y, 100 * g.mean().to_numpy())  # burn-in epoch 1 has no weights
    assert [ax.get_title() for ax in panels] == ["GAIRAT (PGD)", "LRAT (CW)"]
    for ax in panels:
        stairs = [p for p in ax.patches if isinstance(p, StepPatch)]
        assert [s.get_label() for s in stairs] == ["epoch 2", "epoch 3"]
        data = stairs[0].get_data()
        values, edges = data.values, data.edges
        assert len(values) == 21 and edges[0] == 0.0 and edges[-2] == 4.0  # 20 bins of 0.2, one overflow
        assert values.sum() == pytest.approx(100.0)


def test_weights_figure_draws_relative_weights_when_recorded(setting):
    """Histories with rw_* (relative weight: 1 = the batch mean) are drawn from those; a frame where some
    reweighted epochs lack them (older histories) falls back to the raw w_* for every row, never a mix."""
    hist = plots.history_frame(setting)
    assert plots.weights_kind(hist) == "raw"  # the fixture's histories carry only w_*
    rw = hist["w_frac_below_0.2"].notna()
    counts = [0] * 31
    counts[10], counts[1] = 900, 100  # relative weight 1.0-1.1 for 90%, 0.1-0.2 for 10%
    hist["rw_frac_below_0.2"] = np.where(rw, 0.1, np.nan)
    hist["rw_hist"] = [list(counts) if r else None for r in rw]
    assert plots.weights_kind(hist) == "relative"
    share, *panels = plots.weights_figure(hist).axes
    assert share.get_ylabel() == "instances with relative weight < 0.2 (%)"
    assert np.allclose(share.get_lines()[0].get_data()[1], 10.0)  # rw's 0.1, not w's share
    stairs = [p for p in panels[0].patches if isinstance(p, StepPatch)]
    data = stairs[0].get_data()
    assert len(data.values) == 31 and data.edges[-2] == 3.0  # 30 bins of 0.1, one overflow
    assert data.values[10] == pytest.approx(90.0) and data.values[1] == pytest.approx(10.0)
    assert panels[0].get_xlabel().startswith("relative weight (1 = batch mean")
    hist.loc[rw[rw].index[0], "rw_frac_below_0.2"] = np.nan  # one old history among new ones
    assert plots.weights_kind(hist) == "raw"
    assert plots.weights_figure(hist).axes[0].get_ylabel() == "instances with weight < 0.2 (%)"


def test_no_weights_figure_without_reweighted_runs(tmp_path, add_run):
    store = Store(tmp_path)
    add_run(store, "at", "pgd", 0, {"natural": [True, False]})
    chosen, pool = select(load_frame(tmp_path), Selection())
    (s,) = build_settings(store, chosen, pool, Selection())
    assert plots.weights_figure(plots.history_frame(s)) is None
