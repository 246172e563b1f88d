"""The figure files of `bench report` and how the documents show them: per setting the heatmap, the attack ranks
(with attack_rank.csv) and the gaps; once per report the training figures (curves, weights), drawn from every
run's history once however many settings evaluate it. Each figure is written as PDF and PNG with a LaTeX and a
plain-text caption (captions.py); report.tex sets them two to a row."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import bench.report.captions as captions
import bench.report.plots as plots
from bench.report.frame import Setting, atomic_output
from bench.report.stats import attack_ranks
from bench.report.tables import round_frame


@dataclass(frozen=True)
class Shown:
    """A written figure: its name (fig_heatmap, ...), files, captions, and width over height."""

    name: str
    pdf: Path
    png: Path
    caption_tex: str
    caption_text: str
    aspect: float = 1.5


def _save(name: str, fig, stem: Path, tex: str, text: str, written: dict[str, Path]) -> Shown:
    width, height = fig.get_size_inches()
    pdf, png = plots.save(fig, stem)
    written[pdf.name], written[png.name] = pdf, png
    return Shown(name, pdf, png, tex, text, float(width / height))


def setting_figures(setting: Setting, cells: pd.DataFrame, gaps: pd.DataFrame, out: Path,
                    written: dict[str, Path]) -> list[Shown]:
    """The setting's figures it has data for (written into `written`, attack_rank.csv too)."""
    s = setting.slug
    shown = [_save("fig_heatmap", plots.heatmap_figure(cells), out / f"fig_heatmap{s}",
                   captions.heatmap_caption(setting, cells, True), captions.heatmap_caption(setting, cells, False),
                   written)]
    ranks = attack_ranks(cells)
    if ranks["eval_attack"].nunique() >= 2:  # one attack has nothing to be ranked against
        written[f"attack_rank{s}.csv"] = out / f"attack_rank{s}.csv"
        with atomic_output(written[f"attack_rank{s}.csv"]) as tmp:
            round_frame(ranks).to_csv(tmp, index=False)
        shown.append(_save("fig_attack_rank", plots.attack_rank_figure(ranks), out / f"fig_attack_rank{s}",
                           captions.rank_caption(setting, cells, True), captions.rank_caption(setting, cells, False),
                           written))
    if not gaps.empty:
        shown.append(_save("fig_gap", plots.gap_figure(gaps, setting.baseline), out / f"fig_gap{s}",
                           captions.gap_caption(setting, gaps, True), captions.gap_caption(setting, gaps, False),
                           written))
    return shown


def training_figures(settings: list[Setting], out: Path, written: dict[str, Path]) -> list[Shown]:
    """fig_curves and fig_weights, once per report (training does not depend on the test points); none without
    histories, no weights figure without a reweighted epoch."""
    hist = plots.training_history(settings)
    if hist.empty:
        return []
    shown = [_save("fig_curves", plots.curves_figure(hist), out / "fig_curves", captions.curves_caption(hist, True),
                   captions.curves_caption(hist, False), written)]
    weights = plots.weights_figure(hist)
    if weights is not None:
        shown.append(_save("fig_weights", weights, out / "fig_weights", captions.weights_caption(hist, True),
                           captions.weights_caption(hist, False), written))
    return shown


def _graphic(f: Shown, width: str) -> str:
    return "\n".join([rf"\begin{{minipage}}[t]{{{width}}}", r"\centering",
                      rf"\includegraphics[width=\linewidth,height=0.3\textheight,keepaspectratio]{{{f.pdf.name}}}",
                      rf"\captionof{{figure}}{{{f.caption_tex}}}", r"\end{minipage}"])


def figures_tex(shown: list[Shown]) -> str:
    """The figures two to a row, side by side at most 0.3 of the page high, each with its own caption and number,
    in place (not floats: they stay with their setting): a report of three runs keeps to a few pages (the PNGs,
    and report.html, have them full size)."""
    parts = []
    for i in range(0, len(shown), 2):
        pair = shown[i:i + 2]
        width = r"0.48\linewidth" if len(pair) == 2 else r"0.6\linewidth"
        parts += [r"\begin{center}", (r"\hfill" + "\n").join(_graphic(f, width) for f in pair),
                  r"\end{center}", ""]
    return "\n".join(parts)


def figures_md(shown: list[Shown]) -> list[str]:
    """Each figure as a Markdown image, its caption in italics under it."""
    return [line for f in shown for line in (f"![{f.name.removeprefix('fig_')}]({f.png.name})", "",
                                             f"*{f.caption_text}*", "")]
