"""Write every output of `bench report` for a list of settings: the tables (tex/md/csv, numbers rounded to what
they mean), the figures (pdf/png: figures.py), a standalone LaTeX document that includes them all (compiled with
pdflatex when installed), summary.md, a Markdown page to paste into a README or a pull request, and report.html,
one self-contained page to share (html.py). The same store gives the same bytes in every file."""
from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import bench.report.figures as figures
import bench.report.html as html_report
import bench.report.tables as tables
from bench.report.frame import (FLAG_ID_COLUMNS, Selection, Setting, atomic_output, attack_label, baseline_for,
                                method_label, tex_escape)
from bench.report.stats import best_before_reweighting, cell_stats, gap_stats, guard_stats, verdict

log = logging.getLogger(__name__)

PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[a4paper,landscape,margin=1.5cm]{geometry}
\usepackage[T1]{fontenc}
\usepackage{lmodern}
\usepackage{booktabs}
\usepackage{longtable}
\usepackage{graphicx}
\usepackage[font=small,labelfont=bf]{caption}
\pdftrailerid{}
\pdfinfoomitdate=1
\renewcommand{\topfraction}{0.9}
\renewcommand{\bottomfraction}{0.8}
\renewcommand{\textfraction}{0.07}
\renewcommand{\floatpagefraction}{0.75}
\setcounter{topnumber}{3}
\setcounter{totalnumber}{6}
\title{Adversarial training: seen versus unseen attacks}
\author{lrat-bench}
\date{}
\begin{document}
\maketitle
"""


class ReportError(RuntimeError):
    """The report could not be completed (pdflatex failed on the generated document)."""


def _attacks_md(csv: str) -> str:
    return ", ".join(attack_label(a) for a in csv.split(",")) if csv else "none"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _group_text(g: dict, key: str, how: str) -> str:
    """'lower, -10.90 points on average (per seed -10.4, -10.1, -11.8; 3 of 3 seeds lower; seed-level 95% interval
    [-12.9, -8.9], p = 0.003)': the verdict comes from `seed_gap` (bench/report/stats.py: verdict); below 3
    seeds there is none, and the test-point statistic is named as being about these trained models."""
    per_seed = [float(x) for x in str(g[f"{key}_per_seed"]).split(";") if x]
    n, word = len(per_seed), verdict(g, key)
    seeds = ", ".join(f"{x:+.1f}" for x in per_seed)
    models = f"{_p(g[f'{key}_p'])} over test points" if tables.finite(g[f"{key}_p"]) else ""
    if word == "no verdict":
        why = ("one seed compares two trained models, not two methods" if n == 1
               else f"{n} seeds are too few to tell a method from its training variance")
        return (f"{g[f'{key}_gap']:+.2f} points{how} (per seed {seeds}): no verdict: {why}"
                + (f" (these models: {models})" if models else ""))
    lo, hi = g[f"{key}_seed_low"], g[f"{key}_seed_high"]
    return (f"**{word}**, {g[f'{key}_gap']:+.2f} points{how} (per seed {seeds}; {int(g[f'{key}_seeds_lower'])} of {n} "
            f"seeds lower; seed-level 95% interval [{lo:.1f}, {hi:.1f}], {_p(g[f'{key}_seed_p'])})")


def answer_lines(gaps: pd.DataFrame) -> list[str]:
    """One sentence per compared row a reader can quote: the seed-level verdict on seen, related and unseen
    attacks with the per-seed gaps (Markdown; `answer_tex` renders the same sentences for LaTeX)."""
    lines = []
    for g in gaps.to_dict("records"):
        parts = []
        if tables.finite(g["seen_gap"]):
            parts.append(f"on the seen attacks ({_attacks_md(g['seen_attacks'])}) {_group_text(g, 'seen', '')}")
        if tables.finite(g.get("related_gap", float("nan"))):
            parts.append(f"on the related attacks ({_attacks_md(g['related_attacks'])}) "
                         f"{_group_text(g, 'related', '')}")
        if tables.finite(g["unseen_mean_gap"]) and "," not in str(g["unseen_attacks"]):  # one attack: mean = worst
            parts.append(f"on the unseen attack ({_attacks_md(g['unseen_attacks'])}) {_group_text(g, 'unseen_worst', '')}")
        elif tables.finite(g["unseen_mean_gap"]):
            parts.append(f"on the unseen attacks ({_attacks_md(g['unseen_attacks'])}) "
                         f"{_group_text(g, 'unseen_mean', ' on average')}; in the per-example worst case "
                         f"{_group_text(g, 'unseen_worst', '')}")
        if parts:
            n = int(g["n_seeds"])
            lines.append(f"- **{g['variant']}** vs {g['baseline']} ({n} seed{'s' if n != 1 else ''}): "
                         + "; ".join(parts) + ".")
    return lines


def answer_tex(lines: list[str]) -> str:
    """The Markdown answer lines as a LaTeX itemize (bold kept, everything else escaped)."""
    items = []
    for line in lines:
        parts = tex_escape(line.removeprefix("- ")).split("**")
        items.append(r"\item " + "".join(rf"\textbf{{{t}}}" if i % 2 else t for i, t in enumerate(parts)))
    return "\n".join([r"\begin{itemize}", *items, r"\end{itemize}", ""]) if items else ""


def _baseline_note(setting: Setting, tex: bool) -> str:
    refs = [v.label for v in setting.variants if v.reference]
    if not refs:
        return ""
    names = ", ".join(tex_escape(r) if tex else r for r in refs)
    return f" {names}: the baseline for the gaps, shown although outside the selection."


def setting_answer(setting: Setting, gaps: pd.DataFrame) -> list[str]:
    """The setting's Answer (Markdown lines): a sentence per compared row, and a warning naming the best
    checkpoints that predate their method's reweighting."""
    lines = answer_lines(gaps) if not gaps.empty else []
    early = best_before_reweighting(setting)
    if early and lines:
        names = ", ".join(f"{label} seed {seed}" for label, seed in early)
        lines.append(f"- Best checkpoints saved before the method's reweighting began (plain AT trained for fewer "
                     f"epochs, not the method): {names}. `--checkpoint last` compares the methods as trained.")
    return lines


@dataclass(frozen=True)
class SettingOutput:
    """What one setting adds to a report: its files, its part of report.tex, summary.md and report.html, and its
    Answer lines."""

    files: dict[str, Path]
    tex: str
    md: str
    html: str
    answer: list[str]


def write_setting(setting: Setting, out: Path) -> SettingOutput:
    """Tables and figures of one setting."""
    s, written = setting.slug, {}
    sel_tex, sel_md = setting.describe(True), setting.describe(False)
    cells = cell_stats(setting)
    baselines = [v for v in setting.variants if v.method == setting.baseline]
    gaps, per_attack = gap_stats(setting, lambda v: baseline_for(v, baselines))
    guards = guard_stats(setting)
    base_name = method_label(setting.baseline)

    def emit(name: str, tex: str, md: str, frame: pd.DataFrame) -> None:
        for ext, text in (("tex", tex), ("md", md)):
            written[f"{name}{s}.{ext}"] = write_text(out / f"{name}{s}.{ext}", text)
        written[f"{name}{s}.csv"] = out / f"{name}{s}.csv"
        with atomic_output(written[f"{name}{s}.csv"]) as tmp:
            tables.round_frame(frame).to_csv(tmp, index=False)

    emit("table", tables.main_table_latex(cells, sel_tex, f"tab:main{s}",
                                          _baseline_note(setting, True) + tables.worst_note(setting, True)),
         tables.main_table_markdown(cells, sel_md, _baseline_note(setting, False) + tables.worst_note(setting, False)),
         cells)
    emit("guards", tables.guard_table_latex(guards, sel_tex, f"tab:guards{s}"),
         tables.guard_table_markdown(guards, sel_md), tables.guard_frame(guards))
    emit("health", tables.health_table_latex(setting, sel_tex, f"tab:health{s}"),
         tables.health_table_markdown(setting, sel_md), tables.health_frame(setting))
    body_tex = [rf"\section*{{{sel_tex}}}", rf"\input{{table{s}.tex}}", rf"\input{{guards{s}.tex}}",
                rf"\input{{health{s}.tex}}"]
    body_md = [f"## {sel_md}", ""]
    if gaps.empty:
        log.warning("nothing to compare with the baseline %s in %s (absent, or the only method): no gap tables",
                    base_name, sel_md)
        body_md += [f"Nothing to compare with the baseline {base_name} (absent, or the only method): no gap table.", ""]
    else:
        emit("gap_table", tables.gap_table_latex(gaps, sel_tex, f"tab:gap{s}"),
             tables.gap_table_markdown(gaps, sel_md), gaps)
        emit("attack_gaps", tables.attack_gap_latex(per_attack, sel_tex, f"tab:attack-gaps{s}"),
             tables.attack_gap_markdown(per_attack, sel_md), per_attack)
        body_tex += [rf"\input{{gap_table{s}.tex}}", rf"\input{{attack_gaps{s}.tex}}"]
    body_md += ["### Accuracy (%)", "", written[f"table{s}.md"].read_text(),
                "### Guards", "", written[f"guards{s}.md"].read_text(),
                "### Training health", "", written[f"health{s}.md"].read_text()]
    if not gaps.empty:
        body_md += ["### Gap to the baseline", "", written[f"gap_table{s}.md"].read_text(),
                    "### Gap per attack", "", written[f"attack_gaps{s}.md"].read_text()]

    shown = figures.setting_figures(setting, cells, gaps, out, written)
    body_tex.append(figures.figures_tex(shown))
    body_md += figures.figures_md(shown)
    page = html_report.setting_section(setting, cells, gaps, per_attack, guards, _baseline_note(setting, False)
                                       + tables.worst_note(setting, False), shown)
    return SettingOutput(written, "\n".join(body_tex) + "\n", "\n".join(body_md) + "\n", page,
                         setting_answer(setting, gaps))


def write_flags(rows: pd.DataFrame, path: Path) -> Path:
    """flags.csv.gz: one line per (stored result row, test point) of `rows` (a `load_frame` slice with `flags`):
    the row's FLAG_ID_COLUMNS (empty where the row lacks one), `point` (the point's position in the evaluated
    order, 0-based) and `robust` (1: the attack failed on it). Gzip-compressed CSV that pandas.read_csv reads
    as is; written row by row (a study's flags as one frame would not fit in memory), atomically, and byte for
    byte the same for the same rows (the gzip header holds no time, and the file's name, not the temporary one's)."""
    order = [c for c in ("method", "train_attack", "seed", "run_id", "checkpoint", "threat_model", "eval_eps",
                         "n_eval", "eval_precision", "eval_attack") if c in rows]
    rows = rows.sort_values(order, kind="stable") if len(rows) else rows
    ids = pd.DataFrame({c: rows[c] if c in rows else "" for c in FLAG_ID_COLUMNS}, index=rows.index)
    prefixes = ids.to_csv(header=False, index=False, lineterminator="\n").splitlines() if len(rows) else []
    name = path.name.removesuffix(".gz")
    with atomic_output(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
        text.write(",".join([*FLAG_ID_COLUMNS, "point", "robust"]) + "\n")
        for prefix, flags in zip(prefixes, rows["flags"] if len(rows) else []):
            text.write("".join(f"{prefix},{i},{f}\n" for i, f in enumerate(flags)))
    return path


def write_text(path: Path, text: str) -> Path:
    """`path` holding `text`, written atomically (frame.atomic_output)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


MAX_LATEX_RUNS = 4  # cross-references and longtable widths settle in two or three passes
_RERUN = ("Rerun to get", "Label(s) may have changed", "Rerun LaTeX", "Table widths have changed")


def compile_pdf(tex: Path) -> Path | None:
    """pdflatex `tex` in its folder, again while its log asks for a rerun (cross-references, longtable
    widths), at most MAX_LATEX_RUNS times; None (with a warning) when pdflatex is not installed. The passes
    write <stem>-build.*; the PDF is renamed into place only once it is final, so a reader never sees a
    half-written or unsettled report.pdf, and a failed compile removes the old one (it would not match the new
    report.tex) and keeps the log it names."""
    exe = shutil.which("pdflatex")
    if exe is None:
        log.warning("pdflatex is not installed: wrote %s without compiling it", tex)
        return None
    job = f"{tex.stem}-build"
    pdf, build_log = tex.with_suffix(".pdf"), tex.with_name(job + ".log")
    # A fixed date (the caller's SOURCE_DATE_EPOCH, else 0) and \pdftrailerid{} in the preamble: same report.tex,
    # same PDF bytes.
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "0"), "FORCE_SOURCE_DATE": "1"}
    for _ in range(MAX_LATEX_RUNS):
        try:
            proc = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                                   f"-jobname={job}", tex.name], cwd=tex.parent, capture_output=True, text=True,
                                  timeout=300, env=env)
        except subprocess.TimeoutExpired:
            pdf.unlink(missing_ok=True)
            raise ReportError(f"pdflatex did not finish {tex} within 300 s (log: {build_log})") from None
        if proc.returncode != 0:
            pdf.unlink(missing_ok=True)
            tex.with_name(job + ".pdf").unlink(missing_ok=True)
            raise ReportError(f"pdflatex failed on {tex} (log: {build_log}):\n{proc.stdout[-2000:]}")
        log_text = build_log.read_text(errors="replace") if build_log.exists() else proc.stdout
        if not any(marker in log_text for marker in _RERUN):
            break
    else:
        log.warning("%s: references still changing after %d pdflatex runs", tex, MAX_LATEX_RUNS)
    tex.with_name(job + ".pdf").replace(pdf)
    for ext in (".aux", ".log", ".out"):
        tex.with_name(job + ext).unlink(missing_ok=True)
    return pdf


ANSWER_INTRO = ("Each method against the baseline {base}, {ckpt} checkpoints. The verdict (higher, lower, no clear "
                "difference) is seed-level (bench.stats.seed_gap: seeds and test points both vary, each seed's "
                "model a random draw); with fewer than 3 seeds there is none.")


def answer_section(answers: list[tuple[Setting, list[str]]], selection: Selection) -> tuple[str, str]:
    """(LaTeX, Markdown) of the Answer that opens the report: per setting, most test points first."""
    intro = ANSWER_INTRO.format(base=method_label(selection.baseline), ckpt=selection.checkpoint)
    md, tex = ["## Answer", "", intro, ""], [r"\section*{Answer}", tex_escape(intro), ""]
    for setting, lines in answers:
        if lines:
            md += [f"**{setting.describe(False)}**", "", *lines, ""]
            tex += [rf"\paragraph{{{setting.describe(True)}}}", answer_tex(lines)]
    if not any(lines for _, lines in answers):
        md += ["Nothing to compare with the baseline.", ""]
        tex += ["Nothing to compare with the baseline.", ""]
    return "\n".join(tex) + "\n\\clearpage\n", "\n".join(md) + "\n"


def left_out_note(left_out: list[str]) -> tuple[str, str]:
    """(LaTeX, Markdown) of the runs `--skip-damaged` left out, one per line with why; ("", "") for none."""
    if not left_out:
        return "", ""
    head = (f"Left out by `--skip-damaged` ({len(left_out)} finished run{'s' if len(left_out) > 1 else ''} whose "
            "stored results cannot be used; `bench status` says what repairs each):")
    md = "\n".join([f"**{head}**", "", *[f"- {line}" for line in left_out], "", ""])
    def tex(text: str) -> str:  # no backquotes (opening quotes in LaTeX), "--" not an en dash, ASCII only
        return tex_escape(text.replace("`", "")).replace("--", "-{}-").encode("ascii", "replace").decode("ascii")
    return "\n".join([rf"\paragraph{{{tex(head)}}}", r"\begin{itemize}",
                      *[rf"\item {tex(line)}" for line in left_out], r"\end{itemize}", ""]), md


TITLE = "Adversarial training: seen versus unseen attacks"


def _training_part(shown: list[figures.Shown]) -> tuple[str, str, str]:
    """(LaTeX, Markdown, HTML) of the training figures, shown once after the settings; empty without any."""
    if not shown:
        return "", "", ""
    return (r"\section*{Training}" + "\n" + figures.figures_tex(shown), "## Training\n\n"
            + "\n".join(figures.figures_md(shown)) + "\n", "<h2>Training</h2>\n" + html_report.figures(shown))


def write_outputs(settings: list[Setting], selection: Selection, out: Path,
                  left_out: list[str] | None = None) -> dict[str, Path]:
    """Every file of the report; `left_out`: one line per run `--skip-damaged` left out, said in both documents."""
    written: dict[str, Path] = {}
    left_tex, left_md = left_out_note(left_out or [])
    ordered = sorted(settings, key=lambda st: -st.n_points)  # the most test points answer first
    parts = [write_setting(setting, out) for setting in ordered]
    for part in parts:
        written.update(part.files)
    train_tex, train_md, train_html = _training_part(figures.training_figures(ordered, out, written))
    answer_tex_part, answer_md = answer_section([(st, part.answer) for st, part in zip(ordered, parts)], selection)
    doc = written["report.tex"] = write_text(out / "report.tex",
                                             PREAMBLE + left_tex + answer_tex_part + "\n".join(p.tex for p in parts)
                                             + train_tex + "\\end{document}\n")
    head_md = (f"Generated by `bench report` ({selection.checkpoint} checkpoints, baseline "
               f"{method_label(selection.baseline)}).\n\n" + left_md + answer_md)
    written["summary.md"] = write_text(out / "summary.md", f"# {TITLE}\n\n" + head_md + "\n"
                                       + "\n".join(p.md for p in parts) + train_md)
    written["report.html"] = write_text(out / "report.html",
                                        html_report.page(TITLE, head_md, [p.html for p in parts] + [train_html]))
    if selection.compile_pdf:
        pdf = compile_pdf(doc)
        if pdf is not None:
            written["report.pdf"] = pdf
    return written
