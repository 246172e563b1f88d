"""Plots: the files exist, and the matplotlib objects have the expected axes, labels, bars and cells."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors
from matplotlib.container import BarContainer
from matplotlib.image import AxesImage
from matplotlib.legend import Legend
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
        assert ax.get_xlabel() == "evaluation attack" and ax.get_ylabel() == "training\nattack"
        sub = cells[cells.method == method].set_index("eval_attack")
        assert grid[0, 1] == pytest.approx(sub.loc["pgd20", "mean"])
        texts = [t.get_text() for t in ax.texts]
        assert len(texts) == 5 and sum(t.endswith("†") for t in texts) == 1  # exactly one seen cell
    assert any(ax.get_xlabel() == "accuracy (%)" for ax in fig.axes)  # the shared colour bar, below the panels


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
    empty = gaps.assign(**{c: math.nan for c in gaps.columns if c.endswith(("_gap", "_gap_low", "_gap_high"))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "No artists with labels found to put in legend"
        nothing = plots.gap_figure(empty, "at")
    assert not nothing.axes[0].patches and not nothing.legends
    assert [t.get_text() for t in nothing.axes[0].texts] == ["no gap has a value"]
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
    share, legend, *panels = fig.axes
    assert share.get_ylabel() == "instances with weight\n< 0.2 (%)"
    assert [line.get_label() for line in share.get_lines()] == ["GAIRAT (PGD)", "LRAT (CW)"]  # AT has no weights
    texts = [[t.get_text() for t in lg.get_texts()] for lg in legend.get_children() if isinstance(lg, Legend)]
    assert texts == [["GAIRAT (PGD)", "LRAT (CW)"], ["first reweighted epoch", "middle", "last"]]  # beside (a)
    x, y = share.get_lines()[0].get_data()
    g = hist[(hist.variant == "GAIRAT (PGD)") & hist["w_frac_below_0.2"].notna()].groupby("epoch")["w_frac_below_0.2"]
    assert list(x) == [2, 3] and np.allclose(y, 100 * g.mean().to_numpy())  # burn-in epoch 1 has no weights
    assert [ax.get_title() for ax in panels] == ["GAIRAT (PGD)\nepochs 2, 3", "LRAT (CW)\nepochs 2, 3"]
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
    share, _, *panels = plots.weights_figure(hist).axes
    assert share.get_ylabel() == "instances with relative weight\n< 0.2 (%)"
    assert np.allclose(share.get_lines()[0].get_data()[1], 10.0)  # rw's 0.1, not w's share
    stairs = [p for p in panels[0].patches if isinstance(p, StepPatch)]
    data = stairs[0].get_data()
    assert len(data.values) == 31 and data.edges[-2] == 3.0  # 30 bins of 0.1, one overflow
    assert data.values[10] == pytest.approx(90.0) and data.values[1] == pytest.approx(10.0)
    assert panels[0].get_xlabel().startswith("relative weight\n(1 = batch mean")
    hist.loc[rw[rw].index[0], "rw_frac_below_0.2"] = np.nan  # one old history among new ones
    assert plots.weights_kind(hist) == "raw"
    assert plots.weights_figure(hist).axes[0].get_ylabel() == "instances with weight\n< 0.2 (%)"


def test_no_weights_figure_without_reweighted_runs(tmp_path, add_run):
    store = Store(tmp_path)
    add_run(store, "at", "pgd", 0, {"natural": [True, False]})
    chosen, pool = select(load_frame(tmp_path), Selection())
    (s,) = build_settings(store, chosen, pool, Selection())
    assert plots.weights_figure(plots.history_frame(s)) is None


# ---- figures that read (issue 25): nothing clipped, series told apart, legends off the data, panels by rows ----

STUDY_VARIANTS = [("at", "PGD"), ("at", "CW"), ("trades", "KL"), ("mart", "PGD"), ("gairat", "PGD"), ("gairat", "CW"),
                  ("mail", "PGD"), ("mail", "CW"), ("lrat", "PGD"), ("lrat", "GD+CW"), ("lrat", "PGD+CW"),
                  ("lrat", "GD+SAA"), ("lrat", "CW"), ("lrat", "SAA+CW"), ("lrat", "SAA+CW+GD")]


@pytest.fixture(scope="module")
def study_history(history):
    """A 15-variant study's histories (the issue's fig_curves), two seeds each; the 11 reweighted variants carry
    relative weights too."""
    rows = []
    for k, (method, attack) in enumerate(STUDY_VARIANTS):
        for seed in (0, 1):
            for h in history(6, method if method in ("gairat", "mail", "lrat") else "at", seed=10 * k + seed):
                if "w_hist" in h:
                    counts = np.random.default_rng(k).multinomial(1000, np.r_[0.2, np.full(30, 0.8 / 30)])
                    h = {**h, "rw_frac_below_0.2": counts[0] / 1000, "rw_hist": counts.tolist()}
                rows.append({"variant": f"{method.upper()} ({attack})", "method": method,
                             "run_id": f"{k:02d}{seed}", "seed": seed, **h})
    return pd.DataFrame(rows)


def _figure(name: str, setting, tables, study_history):
    cells, gaps = tables
    hist = study_history if name.endswith("-15") else plots.history_frame(setting)
    return {"heatmap": lambda: plots.heatmap_figure(cells),
            "attack_rank": lambda: plots.attack_rank_figure(attack_ranks(cells)),
            "gap": lambda: plots.gap_figure(gaps, "at"),
            "curves": lambda: plots.curves_figure(hist), "weights": lambda: plots.weights_figure(hist)}[
        name.removesuffix("-15")]()


def _drawn_texts(fig, monkeypatch) -> list:
    """Every text artist a draw of `fig` actually paints (tick labels outside the view are never drawn)."""
    from matplotlib.text import Text

    drawn, draw = [], Text.draw

    def spy(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text():
            drawn.append(self)

    monkeypatch.setattr(Text, "draw", spy)
    fig.canvas.draw()
    monkeypatch.undo()
    return drawn


@pytest.mark.parametrize("name", ["heatmap", "attack_rank", "gap", "curves", "weights", "curves-15", "weights-15"])
def test_no_label_leaves_the_canvas(name, setting, tables, study_history, monkeypatch):
    """Every painted text (labels, tick labels, titles, legends, cell values) lies inside the figure's canvas:
    the cut fig_weights y-label ("< 0.2 (%") and x-label of the issue cannot come back."""
    fig = _figure(name, setting, tables, study_history)
    texts = _drawn_texts(fig, monkeypatch)
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    assert len(texts) > 10
    outside = []
    for t in texts:
        box = t.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            outside.append((t.get_text(), [round(v) for v in box.extents]))
    assert not outside, f"{name}: text outside the {width:.0f}x{height:.0f} px canvas: {outside}"


def test_fifteen_series_differ_in_colour_and_line_style(study_history):
    """Beyond ten series a colour comes back only with another line style and marker (the issue: AT (PGD) and
    LRAT (PGD+CW) both blue), in the curves and in the weights' share panel; the same order, the same looks."""
    curves = plots.curves_figure(study_history)
    share = plots.weights_figure(study_history).axes[0]
    for lines, n in ((curves.axes[1].get_lines(), 15), (share.get_lines(), 11)):
        looks = [(mcolors.to_hex(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines]
        assert len(looks) == n and len(set(looks)) == n
        for a in looks:
            for b in looks:
                assert a == b or a[0] != b[0] or (a[1] != b[1] and a[2] != b[2])
    assert [plots.series_style(i) for i in range(15)] == [plots.series_style(i) for i in range(15)]
    assert plots.series_style(0)["color"] == plots.series_style(10)["color"]
    assert plots.series_style(0)["linestyle"] != plots.series_style(10)["linestyle"]


@pytest.mark.parametrize("name", ["gap", "curves-15", "weights-15"])
def test_legends_sit_outside_the_data(name, setting, tables, study_history):
    """No legend covers an axes that draws data (the issue: fig_curves' 15-entry legend over the lines)."""
    fig = _figure(name, setting, tables, study_history)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(lg for ax in fig.axes for lg in ax.get_children() if isinstance(lg, Legend))]
    assert legends
    data_axes = [ax for ax in fig.axes if ax.axison and (ax.lines or ax.patches or ax.images)]
    for legend in legends:
        box = legend.get_window_extent(renderer).padded(-1)
        for ax in data_axes:
            assert not box.overlaps(ax.bbox), f"{name}: a legend covers the axes titled {ax.get_title()!r}"


def test_heatmap_panels_follow_their_rows(tmp_path, add_run):
    """A method with three training attacks gets a panel three rows high, one with one a panel one row high (not
    stretched to its neighbour's height): every panel's cells are the same size."""
    store = Store(tmp_path)
    flags = {"natural": [True, True, False, True], "pgd20": [True, False, False, True]}
    for method, attack in (("lrat", "pgd"), ("lrat", "cw"), ("lrat", "pgd+cw"), ("gairat", "pgd")):
        add_run(store, method, attack, 0, flags)
    chosen, pool = select(load_frame(tmp_path), Selection())
    (s,) = build_settings(store, chosen, pool, Selection())
    fig = plots.heatmap_figure(cell_stats(s))
    fig.canvas.draw()
    panels = {ax.get_title(): ax for ax in fig.axes if ax.images and ax.get_title()}
    rows = {title: ax.images[0].get_array().shape[0] for title, ax in panels.items()}
    assert rows == {"GAIRAT": 1, "LRAT": 3}
    cell_h = [ax.get_window_extent().height / rows[t] for t, ax in panels.items()]
    cell_w = [ax.get_window_extent().width / 3 for ax in panels.values()]  # natural, pgd20, worst
    assert max(cell_h) / min(cell_h) == pytest.approx(1.0, abs=0.05)
    assert max(cell_w) / min(cell_w) == pytest.approx(1.0, abs=0.05)
    short, tall = panels["GAIRAT"].get_window_extent(), panels["LRAT"].get_window_extent()
    assert short.x1 < tall.x0 and abs(short.y1 - tall.y1) < 2  # side by side, the one-row panel top-aligned


def test_saved_figures_are_byte_identical_and_undated(tables, tmp_path):
    """plots.save writes no creation date: the same figure gives the same PDF and PNG bytes."""
    cells, _ = tables
    first = plots.save(plots.heatmap_figure(cells), tmp_path / "a")
    second = plots.save(plots.heatmap_figure(cells), tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    assert b"CreationDate" not in first[0].read_bytes()


def test_training_history_takes_each_run_once(tmp_path, add_run):
    """A run evaluated on two point sets (two settings) is drawn once; runs of two models sharing a label are
    told apart by the model."""
    store = Store(tmp_path / "a")
    add_run(store, "at", "pgd", 0, {"natural": [True] * 4, "pgd20": [True, False] * 2})
    add_run(store, "at", "pgd", 0, {"natural": [True] * 2, "pgd20": [True, False]})
    chosen, pool = select(load_frame(tmp_path / "a"), Selection())
    settings = build_settings(store, chosen, pool, Selection())
    assert len(settings) == 2
    hist = plots.training_history(settings)
    assert len(hist) == 3 and hist["variant"].unique().tolist() == ["AT (PGD)"]  # 3 epochs, once
    store = Store(tmp_path / "b")
    for model in ("small-cnn", "resnet18"):
        add_run(store, "at", "pgd", 0, {"natural": [True, True], "pgd20": [True, False]}, model=model)
    chosen, pool = select(load_frame(tmp_path / "b"), Selection())
    hist = plots.training_history(build_settings(store, chosen, pool, Selection()))
    assert sorted(hist["variant"].unique()) == ["AT (PGD), synthetic, resnet18", "AT (PGD), synthetic, small-cnn"]
