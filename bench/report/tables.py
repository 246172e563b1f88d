"""Tables of `bench report`, each as LaTeX (booktabs), Markdown and CSV twins.

- main table: the LRAT paper's Table 1 layout (rows = method (training attack), columns = natural and each
  eval attack, accuracy %, mean ± std over seeds, best per column bold, seen cells with a dagger), with the
  95% bootstrap interval over test points on a second line;
- gap table: seen / related / unseen-mean / unseen-worst accuracy and the gap to the baseline, intervals, the
  spread over seeds and p-values (bench.stats.paired_gap);
- per-attack gaps: the gap to the baseline under each eval attack, with significance marks;
- guards: every evaluation guard (bench/evaluation/guards.py) that flagged a row, with its reason, or one line
  saying none fired; the main table marks the cells those rows feed with a section sign.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bench.report.frame import attack_label, attack_order, tex_escape
from bench.report.stats import GUARD_COLUMNS, GuardSummary, best_in_column, significance

SEEN_NOTE_TEX = (r"$^\dagger$: the evaluation attack was simulated in training (seen); $^\ddagger$: related to "
                 r"the training attack (same loss, another optimiser or step count, or a component of it).")
SEEN_NOTE_MD = ("†: the evaluation attack was simulated in training (seen); ‡: related to the training attack "
                "(same loss, another optimiser or step count, or a component of it).")
GUARD_NOTE_TEX = r"\S: guard flagged: see the Guards table."
GUARD_NOTE_MD = "§: guard flagged: see the Guards table."
TEST_TEXT = ("exact sign-flip test on the per-point, seed-averaged differences (test points as the unit, valid when "
             "seeds share points; exact McNemar for one seed)")
STARS_TEX = TEST_TEXT + r" against the baseline: * $p<0.05$, ** $p<0.01$, *** $p<0.001$"
STARS_MD = TEST_TEXT + r" against the baseline: \* p < 0.05, \*\* p < 0.01, \*\*\* p < 0.001"


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


def _flagged(cell) -> bool:
    """Whether a guard flagged any row of a main-table cell (`guards_flagged` of cell_stats; absent: no)."""
    value = cell.get("guards_flagged", "")
    return isinstance(value, str) and bool(value)


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
        if tex:
            marks = _relation_mark(c, tex) + (r"\S" if _flagged(c) else "")
            marks = rf"$^{{{marks}}}$" if marks else ""
        else:
            marks = (" " + _relation_mark(c, tex) if _relation_mark(c, tex) else "") + (" §" if _flagged(c) else "")
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
    return (f"Accuracy ({pct}) on {selection}: mean {pm} std over {seeds} per row, {below} the 95{pct} bootstrap "
            f"interval over the {points}. Bold: best in each column. "
            f"{SEEN_NOTE_TEX if tex else SEEN_NOTE_MD}{guard_note}{baseline_note}")


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


def gap_grid(gaps: pd.DataFrame, tex: bool) -> Grid:
    delta = r"$\Delta$" if tex else "Δ"
    groups = _gap_groups(gaps)
    header = ["Method (train attack)", "Baseline"]
    for _, title in groups:
        header += [title, f"{delta} {title[0].lower() + title[1:]}", "p"]
    rows, subs = [], []
    for g in gaps.to_dict("records"):
        name = tex_escape if tex else str
        row, sub = [name(g["variant"]), name(g["baseline"])], ["", ""]
        for key, _ in groups:
            acc, sd = g[f"{key}_acc"], g.get(f"{key}_gap_seed_sd", math.nan)
            row += [f"{acc:.2f}" if finite(acc) else "--", _signed(g[f"{key}_gap"], tex), _p_text(g[f"{key}_p"], tex)]
            spread = f" sd {sd:.1f}" if finite(sd) else ""
            sub += ["", _interval(g[f"{key}_gap_low"], g[f"{key}_gap_high"], tex) + spread, ""]
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
            f"{'below it' if tex else 'then'} the 95{pct} bootstrap interval over the {points} (it covers which "
            f"test points were drawn) and sd, the standard deviation of the per-seed gaps (how much a new seed "
            f"moves it); p: {TEST_TEXT}. Attacks: {_attack_sets(gaps, tex)}.")
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
        stars = significance(c["p"])
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
    return (f"Gap to the baseline (method minus baseline, accuracy points) under each evaluation attack on "
            f"{selection}, averaged over {seeds} per row, {'below it' if tex else 'then'} the 95{pct} "
            f"bootstrap interval over the {points}. "
            f"Marks: {STARS_TEX if tex else STARS_MD}. {SEEN_NOTE_TEX if tex else SEEN_NOTE_MD}")


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
