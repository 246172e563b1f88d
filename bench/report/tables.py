"""Tables of `bench report`, each as LaTeX (booktabs), Markdown and CSV twins.

- main table: the LRAT paper's Table 1 layout (rows = method (training attack), columns = natural and each
  eval attack, accuracy %, mean ± std over seeds, best per column bold, seen cells with a dagger), with the
  95% bootstrap interval over test points on a second line;
- gap table: seen / related / unseen-mean / unseen-worst accuracy and the gap to the baseline, intervals, the
  spread over seeds and p-values (bench.stats.paired_gap);
- per-attack gaps: the gap to the baseline under each eval attack, with significance marks;
- guards: every evaluation guard (bench/evaluation/guards.py) that flagged a row, with its reason, or one line
  saying none fired; the main table marks the cells those rows feed with a section sign;
- training health: every run a training-health check (bench/health.py) flagged, with its reason, or one line
  saying none was; the main table marks the cells of those runs with a pilcrow (¶), and its caption names the
  code fingerprints (bench/fingerprint.py) when its rows were trained by different code.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.config.catalog import EXTERNAL
from bench.health import CHANCE_MARGIN, STUCK_LOSS_FRACTION
from bench.report.frame import Setting, attack_label, attack_order, tex_escape
from bench.report.stats import (MIN_VERDICT_SEEDS, GUARD_COLUMNS, GuardSummary, best_in_column, significance,
                                worst_outliers)

SEEN_NOTE_TEX = (r"$^\dagger$: the evaluation attack was simulated in training (seen); $^\ddagger$: related to "
                 r"the training attack (same loss, another optimiser or step count, or a component of it).")
SEEN_NOTE_MD = ("†: the evaluation attack was simulated in training (seen); ‡: related to the training attack "
                "(same loss, another optimiser or step count, or a component of it).")
GUARD_NOTE_TEX = r"\S: guard flagged: see the Guards table."
GUARD_NOTE_MD = "§: guard flagged: see the Guards table."
HEALTH_NOTE_TEX = r"\P: a run of the row failed a training-health check: see the Training health list."
HEALTH_NOTE_MD = "¶: a run of the row failed a training-health check: see the Training health list."
TEST_TEXT = ("exact sign-flip test on the per-point, seed-averaged differences (test points as the unit: about "
             "these trained models, not the methods; exact McNemar for one seed)")
SEED_TEXT = ("seed-level test (bench.stats.seed_gap: seed x point random-effects standard error, t on seeds - 1 df; "
             "about the methods, each seed's model a random draw; none below 3 seeds)")
STARS_TEX = tex_escape(SEED_TEXT) + r" against the baseline: * $p<0.05$, ** $p<0.01$, *** $p<0.001$"
STARS_MD = SEED_TEXT + r" against the baseline: \* p < 0.05, \*\* p < 0.01, \*\*\* p < 0.001"


KL_NOTE = ("TRADES' KL attack: PGD-20, FGSM and APGD-CE count as related, since its gradient on the logits is "
           "close to cross-entropy's on confidently correct points (docs/methods.md, Attack relations).")


def kl_note(frame: pd.DataFrame, tex: bool) -> str:
    """' TRADES' KL attack: ...' when a row of `frame` trained with `kl`; '' otherwise."""
    if "train_attack" not in frame or not (frame["train_attack"] == "kl").any():
        return ""
    return " " + (tex_escape(KL_NOTE) if tex else KL_NOTE)


def finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def count_text(values: Sequence[int], noun: str) -> str:
    """[3, 3, 2] -> '2-3 seeds'; [3] -> '3 seeds'; [1] -> '1 seed'."""
    lo, hi = min(values), max(values)
    plural = noun if hi == 1 else noun + "s"
    return f"{lo} {plural}" if lo == hi else f"{lo}--{hi} {plural}"


@dataclass(frozen=True)
class Grid:
    """A rendered table: header, one main line per row and an optional interval line under it."""

    header: list[str]
    rows: list[list[str]]
    sub_rows: list[list[str] | None]

    def latex(self, caption: str, label: str) -> str:
        lines = [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
                 r"\begin{tabular}{l" + "r" * (len(self.header) - 1) + "}", r"\toprule",
                 " & ".join(self.header) + r" \\", r"\midrule"]
        for row, sub in zip(self.rows, self.sub_rows):
            lines.append(" & ".join(row) + r" \\")
            if sub is not None:
                lines.append(" & ".join(rf"{{\scriptsize {c}}}" if c else "" for c in sub) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def markdown(self, caption: str) -> str:
        lines = ["| " + " | ".join(self.header) + " |",
                 "|" + "|".join([":--"] + ["--:"] * (len(self.header) - 1)) + "|"]
        for row, sub in zip(self.rows, self.sub_rows):
            cells = row if sub is None else [c + (f" <sub>{s}</sub>" if s else "") for c, s in zip(row, sub)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + f"\n\n{caption}\n"

    def html(self, caption: str, inline: Callable[[str], str] = html.escape) -> str:
        """A <table> with its caption; `inline` renders a cell's Markdown (bold, escapes) as HTML."""
        head = "".join(f"<th>{inline(h)}</th>" for h in self.header)
        body = []
        for row, sub in zip(self.rows, self.sub_rows):
            cells = [inline(c) + (f"<br><small>{inline(sub[i])}</small>" if sub and sub[i] else "")
                     for i, c in enumerate(row)]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return (f"<table>\n<caption>{inline(caption)}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
                + "\n".join(body) + "\n</tbody>\n</table>\n")


# CSV columns by meaning (names as the report's frames spell them): p-values keep 3 significant digits, counts
# stay integers (a NaN among them made pandas store them as floats), every other number is accuracy points.
P_COLUMN = re.compile(r"(^|_)p$")
COUNT_COLUMN = re.compile(r"(^|_)(n_\w+|n|b|c|rank|seeds_lower|n_pairs|seed)$")


def round_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as its CSV should hold it: accuracies, gaps, spreads and intervals (points) to 0.01, p-values to
    3 significant digits, integer counts as integers (empty where missing); strings (per_seed) untouched. Float
    noise (34.300000000000004, -4.4e-16) never reaches a CSV, and -0.0 is written 0.0."""
    out = frame.copy()
    for col in out.columns:
        values = out[col]
        if not pd.api.types.is_float_dtype(values):
            continue
        if P_COLUMN.search(col):
            out[col] = values.map(lambda x: float(f"{x:.3g}") if finite(x) else x)
        elif COUNT_COLUMN.search(col) and np.all(np.mod(values.dropna(), 1) == 0):
            out[col] = values.astype("Int64")
        else:
            out[col] = values.round(2) + 0.0
    return out


def _interval(lo: float, hi: float, tex: bool, digits: int = 1) -> str:
    if not (finite(lo) and finite(hi)):
        return ""
    return f"$[{lo:.{digits}f}, {hi:.{digits}f}]$" if tex else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _signed(x: float, tex: bool) -> str:
    return (f"${x:+.2f}$" if tex else f"{x:+.2f}") if finite(x) else "--"


def _p_text(p: float, tex: bool) -> str:
    if not finite(p):
        return "--"
    return ("$<0.001$" if tex else "<0.001") if p < 0.001 else f"{p:.3f}"


def _relation_mark(cell, tex: bool) -> str:
    """Dagger for a seen attack, double dagger for a related one (the LRAT paper's "(rel)")."""
    relation = cell.get("relation", "seen" if cell.get("seen") else "unseen")
    marks = {"seen": (r"\dagger", "†"), "related": (r"\ddagger", "‡")}.get(relation)
    return "" if marks is None else marks[0] if tex else marks[1]


def _rows_in_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["variant"]))


def _flagged(cell, column: str = "guards_flagged") -> bool:
    """Whether a guard flagged any row of a main-table cell (`guards_flagged` of cell_stats; absent: no), or
    with `column` "health_flagged", whether a training-health check flagged one of its runs."""
    value = cell.get(column, "")
    return isinstance(value, str) and bool(value)


def _fingerprint_note(cells: pd.DataFrame, tex: bool) -> str:
    """' Rows trained by 2 different code fingerprints: abc for AT (PGD); def for LRAT (CW).' when the table's
    rows were trained by different code (`code_fingerprints` of cell_stats); '' otherwise. A row whose seeds
    differ is named under each; rows without a recorded fingerprint are named as such."""
    by_fp: dict[str, list[str]] = {}
    unrecorded = []
    for variant, group in cells.groupby("variant", sort=False):
        fps = {fp for v in group.get("code_fingerprints", []) if isinstance(v, str) for fp in v.split(",") if fp}
        for fp in sorted(fps):
            by_fp.setdefault(fp, []).append(tex_escape(variant) if tex else variant)
        if not fps and EXTERNAL not in set(group.get("train_attack", [])):  # an external model: not our code
            unrecorded.append(tex_escape(variant) if tex else variant)
    if len(by_fp) < 2:
        return ""
    parts = [f"{fp} for {', '.join(vs)}" for fp, vs in sorted(by_fp.items())]
    parts += [f"not recorded for {', '.join(unrecorded)}"] if unrecorded else []
    return f" Rows trained by {len(by_fp)} different code fingerprints (the training code): " + "; ".join(parts) + "."


# ---- main table ---------------------------------------------------------------------------------------------

def _grid_rows(frame: pd.DataFrame, attacks: list[str], lead, cell) -> tuple[list[list[str]], list[list[str]]]:
    """Rows of a variant x eval-attack grid: `lead(variant)` opens each row, `cell(c) -> (text, interval)` fills
    it, and "--" stands where the variant was not evaluated under that attack."""
    index = frame.set_index(["variant", "eval_attack"])
    rows, subs = [], []
    for variant in _rows_in_order(frame):
        row = lead(variant)
        sub = [""] * len(row)
        for a in attacks:
            text, interval = cell(index.loc[(variant, a)]) if (variant, a) in index.index else ("--", "")
            row.append(text)
            sub.append(interval)
        rows.append(row)
        subs.append(sub)
    return rows, subs


def main_grid(cells: pd.DataFrame, tex: bool) -> Grid:
    attacks = attack_order(cells["eval_attack"].unique())
    header = ["Method (train attack)"] + [attack_label(a) for a in attacks]

    def cell(c):
        mean = f"{c['mean']:.2f}"
        mean = (rf"\textbf{{{mean}}}" if tex else f"**{mean}**") if c["best"] else mean
        std = (rf" $\pm$ {c['std']:.2f}" if tex else f" ± {c['std']:.2f}") if finite(c["std"]) else ""
        health = _flagged(c, "health_flagged")
        if tex:
            marks = _relation_mark(c, tex) + (r"\S" if _flagged(c) else "") + (r"\P" if health else "")
            marks = rf"$^{{{marks}}}$" if marks else ""
        else:
            marks = (" " + _relation_mark(c, tex) if _relation_mark(c, tex) else "") + (" §" if _flagged(c) else "")
            marks += " ¶" if health else ""
        return mean + std + marks, _interval(c["ci_low"], c["ci_high"], tex)

    rows, subs = _grid_rows(cells.assign(best=best_in_column(cells)), attacks,
                            lambda v: [tex_escape(v) if tex else v], cell)
    return Grid(header, rows, subs)


def main_caption(cells: pd.DataFrame, selection: str, tex: bool, baseline_note: str = "") -> str:
    seeds = count_text(cells.groupby("variant")["n_seeds"].max().tolist(), "seed")
    points = count_text(cells["n_points"].unique().tolist(), "test point")
    if not tex:
        seeds, points = seeds.replace("--", "–"), points.replace("--", "–")
    pm, pct = (r"$\pm$", r"\%") if tex else ("±", "%")
    below = "below it" if tex else "then"
    guards = any(_flagged(c) for _, c in cells.iterrows())
    guard_note = (" " + (GUARD_NOTE_TEX if tex else GUARD_NOTE_MD)) if guards else ""
    if any(_flagged(c, "health_flagged") for _, c in cells.iterrows()):
        guard_note += " " + (HEALTH_NOTE_TEX if tex else HEALTH_NOTE_MD)
    spread = f"mean {pm} std over {seeds} per row" if cells["n_seeds"].max() > 1 else "one seed per row"
    return (f"Accuracy ({pct}) on {selection}: {spread}, {below} the 95{pct} bootstrap "
            f"interval over the {points}. Bold: best in each column. "
            f"{SEEN_NOTE_TEX if tex else SEEN_NOTE_MD}{kl_note(cells, tex)}{guard_note}{_fingerprint_note(cells, tex)}"
            f"{baseline_note}")


def worst_note(setting: Setting, tex: bool) -> str:
    """' Worst over different attack sets: -- for X (external), whose Worst combines Natural, PGD-20; the other
    rows' combines Natural, PGD-20, CW-20, AA.' where rows' Worst columns are over different attacks ('' else)."""
    reference, outliers = worst_outliers(setting)
    if not outliers:
        return ""
    def names(attacks) -> str:
        return ", ".join(attack_label(a) for a in attack_order(attacks))
    rows = [f"{tex_escape(label) if tex else label}, whose " + (f"Worst combines {names(a)}" if a is not None
                                                                 else "seeds' Worst combine different attacks")
            for label, a in outliers.items()]
    rest = f"; the other rows' combines {names(reference)}" if reference is not None else ""
    return f" Worst over different attack sets: -- for {'; '.join(rows)}{rest} (not compared)."


def main_table_latex(cells: pd.DataFrame, selection: str, label: str = "tab:main", baseline_note: str = "") -> str:
    return main_grid(cells, tex=True).latex(main_caption(cells, selection, True, baseline_note), label)


def main_table_markdown(cells: pd.DataFrame, selection: str, baseline_note: str = "") -> str:
    return main_grid(cells, tex=False).markdown(main_caption(cells, selection, False, baseline_note))


# ---- gap table ----------------------------------------------------------------------------------------------

def _gap_groups(gaps: pd.DataFrame) -> list[tuple[str, str]]:
    """(column prefix, header) of the gap table's groups; related only where any row has a related attack."""
    groups = [("seen", "Seen"), ("related", "Related"), ("unseen_mean", "Unseen mean"),
              ("unseen_worst", "Unseen worst")]
    has_related = "related_attacks" in gaps and gaps["related_attacks"].fillna("").astype(bool).any()
    return [g for g in groups if g[0] != "related" or has_related]


def _seeds_lower(g: dict, key: str) -> str:
    """'3/3 lower' from a gap row's seed columns; '' where there is no pair."""
    n = g.get(f"{key}_n_pairs", math.nan)
    return f"{int(g[f'{key}_seeds_lower'])}/{int(n)} lower" if finite(n) and n > 0 else ""


def gap_grid(gaps: pd.DataFrame, tex: bool) -> Grid:
    """Per group: accuracy, the gap with its seed-level interval under it, the seed-level p (how many seeds are
    lower under it), and the test-point p of these trained models (its bootstrap interval under it)."""
    delta = r"$\Delta$" if tex else "Δ"
    groups = _gap_groups(gaps)
    header = ["Method (train attack)", "Baseline"]
    for _, title in groups:
        header += [title, f"{delta} {title[0].lower() + title[1:]}", "p seeds", "p models"]
    rows, subs = [], []
    for g in gaps.to_dict("records"):
        name = tex_escape if tex else str
        row, sub = [name(g["variant"]), name(g["baseline"])], ["", ""]
        for key, _ in groups:
            acc = g[f"{key}_acc"]
            row += [f"{acc:.2f}" if finite(acc) else "--", _signed(g[f"{key}_gap"], tex),
                    _p_text(g.get(f"{key}_seed_p", math.nan), tex), _p_text(g[f"{key}_p"], tex)]
            sub += ["", _interval(g.get(f"{key}_seed_low", math.nan), g.get(f"{key}_seed_high", math.nan), tex),
                    _seeds_lower(g, key), _interval(g[f"{key}_gap_low"], g[f"{key}_gap_high"], tex)]
        rows.append(row)
        subs.append(sub)
    return Grid(header, rows, subs)


def _attack_sets(gaps: pd.DataFrame, tex: bool) -> str:
    """'seen PGD-20, related FGSM, unseen CW-20 and AA for GAIRAT (PGD), ...': what each column aggregates."""
    def names(csv) -> str:
        return ", ".join(attack_label(a) for a in csv.split(",")) if isinstance(csv, str) and csv else "none"
    groups: dict[tuple[str, str, str], list[str]] = {}
    for g in gaps.to_dict("records"):
        groups.setdefault((g["seen_attacks"], g.get("related_attacks", ""), g["unseen_attacks"]), []).append(g["variant"])
    parts = [f"seen {names(s)}, related {names(r)}, unseen {names(u)} for "
             + ", ".join(tex_escape(v) if tex else v for v in vs) for (s, r, u), vs in groups.items()]
    return "; ".join(parts)


def gap_caption(gaps: pd.DataFrame, selection: str, tex: bool) -> str:
    seeds = count_text(gaps["n_seeds"].tolist(), "seed")
    base_seeds = count_text(gaps["n_baseline_seeds"].tolist(), "seed")
    points = count_text(gaps["n_points"].unique().tolist(), "test point")
    pct, delta = (r"\%", r"$\Delta$") if tex else ("%", "Δ")
    text = (f"Seen, related and unseen attacks on {selection}. Seen: accuracy ({pct}) under the training attack's "
            f"own evaluation attack; related: the same loss with another optimiser or step count, or an attack "
            f"containing it (per-example worst case when several); unseen: the other attacks, as their mean "
            f"accuracy and as the per-example worst case (never including related ones). {delta}: method minus "
            f"baseline in points over seed-matched runs ({seeds} per row, {base_seeds} for the baseline), "
            f"{'below it' if tex else 'then'} its 95{pct} seed-level interval (seeds and test points both vary; "
            f"none below 3 seeds). p seeds: the {tex_escape(SEED_TEXT) if tex else SEED_TEXT}, {'below it' if tex else 'then'} how many seeds have "
            f"the method below the baseline: the verdict about the methods. p models: {TEST_TEXT}, "
            f"{'below it' if tex else 'then'} its 95{pct} bootstrap interval over the {points}. "
            f"Attacks: {_attack_sets(gaps, tex)}.{kl_note(gaps, tex)}")
    return text if tex else text.replace("--", "–")


def gap_table_latex(gaps: pd.DataFrame, selection: str, label: str = "tab:gap") -> str:
    return gap_grid(gaps, tex=True).latex(gap_caption(gaps, selection, True), label)


def gap_table_markdown(gaps: pd.DataFrame, selection: str) -> str:
    return gap_grid(gaps, tex=False).markdown(gap_caption(gaps, selection, False))


# ---- per-attack gaps ----------------------------------------------------------------------------------------

def attack_gap_grid(per_attack: pd.DataFrame, tex: bool) -> Grid:
    attacks = attack_order(per_attack["eval_attack"].unique())
    header = ["Method (train attack)", "Baseline"] + [attack_label(a) for a in attacks]

    def lead(variant):
        base = per_attack.loc[per_attack["variant"] == variant, "baseline"].iloc[0]
        return [tex_escape(variant), tex_escape(base)] if tex else [variant, base]

    def cell(c):
        enough = finite(c.get("n_pairs", math.nan)) and c["n_pairs"] >= MIN_VERDICT_SEEDS
        stars = significance(c["seed_p"]) if enough else ""  # below 3 seeds: no verdict, no stars
        relation = _relation_mark(c, tex)
        if tex:
            marks = stars + relation
            text = rf"${c['gap']:+.2f}^{{{marks}}}$" if marks else _signed(c["gap"], tex)
        else:  # escaped: a bare * is emphasis in Markdown
            text = _signed(c["gap"], tex) + stars.replace("*", r"\*") + (f" {relation}" if relation else "")
        return text, _interval(c["gap_low"], c["gap_high"], tex)

    rows, subs = _grid_rows(per_attack, attacks, lead, cell)
    return Grid(header, rows, subs)


def attack_gap_caption(per_attack: pd.DataFrame, selection: str, tex: bool) -> str:
    points = count_text(per_attack["n_points"].unique().tolist(), "test point")
    seeds = count_text(per_attack.groupby("variant")["n_seeds"].max().tolist(), "seed")
    pct = r"\%" if tex else "%"
    notes = [n for n in dict.fromkeys(per_attack.get("note", pd.Series(dtype=str)).fillna("")) if n]
    worst = (" Worst: -- where the two rows' worst cases combine different attacks ("
             + "; ".join(tex_escape(n) if tex else n for n in notes) + ").") if notes else ""
    return (f"Gap to the baseline (method minus baseline, accuracy points) under each evaluation attack on "
            f"{selection}, {'one seed per row' if seeds == '1 seed' else f'averaged over {seeds} per row'}, "
            f"{'below it' if tex else 'then'} the 95{pct} "
            f"bootstrap interval over the {points} (these trained models). "
            f"Marks: {STARS_TEX if tex else STARS_MD}. {SEEN_NOTE_TEX if tex else SEEN_NOTE_MD}{worst}")


def attack_gap_latex(per_attack: pd.DataFrame, selection: str, label: str = "tab:attack-gaps") -> str:
    return attack_gap_grid(per_attack, tex=True).latex(attack_gap_caption(per_attack, selection, True), label)


def attack_gap_markdown(per_attack: pd.DataFrame, selection: str) -> str:
    return attack_gap_grid(per_attack, tex=False).markdown(attack_gap_caption(per_attack, selection, False))


# ---- guards -------------------------------------------------------------------------------------------------

GUARD_HEADER = ["Method (train attack)", "Seed", "Checkpoint", "Eval attack", "Guard", "Reason"]


def _tex_text(text: str) -> str:
    """Free text (a guard's reason, possibly an AutoAttack warning) -> LaTeX text that always compiles."""
    out = tex_escape(text).replace("^", r"\textasciicircum{}").replace("~", r"\textasciitilde{}")
    return out.encode("ascii", "replace").decode("ascii")


def _rows_text(n: int, verb: str = "") -> str:
    return f"{n} row" + ("" if n == 1 else "s") + (f" {verb}{'s' if n == 1 else ''}" if verb else "")


def guard_lines(guards: GuardSummary) -> list[dict]:
    """The flagged guards, one line per (row of the table, seed, checkpoint, guard, reason), the eval attacks
    that share them listed together (a model guard or a suite guard flags every attack of a checkpoint)."""
    lines: dict[tuple, dict] = {}
    for g in guards.flagged.to_dict("records"):
        key = (g["variant"], g["seed"], g["checkpoint"], g["guard"], g["reason"])
        lines.setdefault(key, {**g, "eval_attacks": []})["eval_attacks"].append(g["eval_attack"])
    return list(lines.values())


def _guard_counts(guards: GuardSummary) -> tuple[str, str]:
    """('the 24 checked rows', 'no row predates the guards' / '4 rows predate the guards (not checked)')."""
    checked = "the 1 checked row" if guards.n_checked == 1 else f"the {guards.n_checked} checked rows"
    unchecked = ("no row predates the guards" if not guards.n_unchecked
                 else f"{_rows_text(guards.n_unchecked, 'predate')} the guards (not checked)")
    return checked, unchecked


def guard_caption(guards: GuardSummary, selection: str, tex: bool) -> str:
    rows = len(guards.flagged.drop_duplicates(["run_id", "checkpoint", "eval_attack"]))
    checked, unchecked = _guard_counts(guards)
    name = r"guard\_$<$name$>$" if tex else "`guard_<name>`"
    return (f"Evaluation guards that flagged a result row on {selection}: {rows} of {checked}; {unchecked}. "
            f"Reasons as stored in results.csv ({name}); the Worst column combines the other rows of a "
            f"checkpoint and inherits their flags.")


def guard_none_line(guards: GuardSummary, selection: str) -> str:
    checked, unchecked = _guard_counts(guards)
    return f"Guards on {selection}: no guard fired on {checked}; {unchecked}."


def guard_table_latex(guards: GuardSummary, selection: str, label: str = "tab:guards") -> str:
    """A longtable (it may run over pages: a flag must never fall off the page), or one line when none fired."""
    if guards.flagged.empty:
        return rf"\paragraph{{Guards.}} {guard_none_line(guards, selection)}" + "\n"
    header = " & ".join(GUARD_HEADER) + r" \\"
    lines = [r"\begingroup\small", r"\begin{longtable}{lrllp{0.18\linewidth}p{0.4\linewidth}}",
             rf"\caption{{{guard_caption(guards, selection, True)}}}\label{{{label}}} \\",
             r"\toprule", header, r"\midrule", r"\endfirsthead", r"\toprule", header, r"\midrule", r"\endhead",
             r"\bottomrule", r"\endlastfoot"]
    for g in guard_lines(guards):
        attacks = ", ".join(attack_label(a) for a in g["eval_attacks"])
        lines.append(" & ".join([tex_escape(g["variant"]), str(g["seed"]), tex_escape(g["checkpoint"]),
                                 tex_escape(attacks), tex_escape(g["guard"]), _tex_text(g["reason"])]) + r" \\")
    lines += [r"\end{longtable}", r"\endgroup"]
    return "\n".join(lines) + "\n"


def guard_table_markdown(guards: GuardSummary, selection: str) -> str:
    if guards.flagged.empty:
        return guard_none_line(guards, selection) + "\n"
    def cell(text) -> str:
        return str(text).replace("|", r"\|").replace("\n", " ")
    rows = [[cell(g["variant"]), str(g["seed"]), cell(g["checkpoint"]),
             cell(", ".join(attack_label(a) for a in g["eval_attacks"])), cell(g["guard"]),
             cell(g["reason"])] for g in guard_lines(guards)]
    lines = ["| " + " | ".join(GUARD_HEADER) + " |", "|" + "|".join([":--", "--:"] + [":--"] * 4) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + f"\n\n{guard_caption(guards, selection, False)}\n"


def guard_frame(guards: GuardSummary) -> pd.DataFrame:
    """The CSV twin: one row per (result row, flagged guard); the header alone when none fired."""
    return guards.flagged[GUARD_COLUMNS]


# ---- training health ----------------------------------------------------------------------------------------

HEALTH_COLUMNS = ["variant", "method", "train_attack", "seed", "run_id", "flag", "reason"]
HEALTH_HEADER = ["Method (train attack)", "Seed", "Run", "Flag", "Reason"]


def health_frame(setting: Setting) -> pd.DataFrame:
    """One row per (run of the setting's table, training-health flag), with its reason; the header alone when
    no run is flagged. Also the CSV twin of the Training health list."""
    out = [{"variant": v.label, "method": v.method, "train_attack": v.train_attack, "seed": seed, "run_id": run,
            "flag": flag, "reason": reason}
           for v in setting.variants for seed, run in zip(v.seeds, v.run_ids)
           for flag, reason in setting.health.get(run, {}).items()]
    return pd.DataFrame(out, columns=HEALTH_COLUMNS)


def _health_rules(tex: bool) -> str:
    """The checks, in words (bench/health.py), for the caption and the none line."""
    if tex:
        return (rf"validation accuracy $\leq 1/K + {CHANCE_MARGIN}$ after the first epoch (val\_at\_chance), "
                rf"training loss $\geq {STUCK_LOSS_FRACTION} \ln K$ in an epoch after the first 20\% of the run "
                r"(loss\_stuck), a non-finite training loss (nonfinite\_loss); K: the number of classes")
    return (f"validation accuracy ≤ 1/K + {CHANCE_MARGIN} after the first epoch (val_at_chance), training loss "
            f"≥ {STUCK_LOSS_FRACTION} ln K in an epoch after the first 20% of the run (loss_stuck), a non-finite "
            "training loss (nonfinite_loss); K: the number of classes")


def _health_runs(setting: Setting) -> str:
    n = sum(len(v.run_ids) for v in setting.variants)
    return f"{n} run" + ("" if n == 1 else "s")


def health_table_latex(setting: Setting, selection: str, label: str = "tab:health") -> str:
    """The Training health list as a longtable (never falls off a page), or one line when no run is flagged."""
    flagged = health_frame(setting)
    if flagged.empty:
        return (rf"\paragraph{{Training health.}} No run flagged on {selection} ({_health_runs(setting)} "
                rf"checked: {_health_rules(True)})." + "\n")
    header = " & ".join(HEALTH_HEADER) + r" \\"
    lines = [r"\begingroup\small", r"\begin{longtable}{lrllp{0.45\linewidth}}",
             rf"\caption{{Training health on {selection}: runs flagged by {_health_rules(True)}.}}"
             rf"\label{{{label}}} \\",
             r"\toprule", header, r"\midrule", r"\endfirsthead", r"\toprule", header, r"\midrule", r"\endhead",
             r"\bottomrule", r"\endlastfoot"]
    lines += [" & ".join([tex_escape(h["variant"]), str(h["seed"]), tex_escape(h["run_id"]), tex_escape(h["flag"]),
                          _tex_text(h["reason"])]) + r" \\" for h in flagged.to_dict("records")]
    return "\n".join([*lines, r"\end{longtable}", r"\endgroup"]) + "\n"


def health_table_markdown(setting: Setting, selection: str) -> str:
    flagged = health_frame(setting)
    if flagged.empty:
        return f"No run flagged on {selection} ({_health_runs(setting)} checked: {_health_rules(False)}).\n"
    rows = [[str(h[k]).replace("|", r"\|") for k in ("variant", "seed", "run_id", "flag", "reason")]
            for h in flagged.to_dict("records")]
    lines = ["| " + " | ".join(HEALTH_HEADER) + " |", "|:--|--:|:--|:--|:--|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + f"\n\nTraining health on {selection}: runs flagged by {_health_rules(False)}.\n"
