"""report.html: the report as one self-contained page to share. The Answer (summary.md's own sentences), every
table rendered from the Grid objects of tables.py, and the figures as base64 PNG data URIs with their captions;
inline CSS, no script, nothing fetched from the network, no date: the same store gives the same bytes."""
from __future__ import annotations

import base64
import html
import re

import pandas as pd

import bench.report.tables as tables
from bench.report.figures import Shown
from bench.report.frame import Setting, attack_label, method_label
from bench.report.stats import GuardSummary

STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-top:1.5em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#444;padding-top:.4em;max-width:80em}
th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #333}
td small{color:#666}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#444;max-width:80em}
code{background:#f3f3f3;padding:0 .2em}"""


def inline(md: str) -> str:
    """One line of the report's Markdown as HTML: escaped, then **bold**, `code`, and the \\* and \\| escapes."""
    text = html.escape(md, quote=False).replace("\\*", "&#42;").replace("\\|", "|")
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_block(md: str) -> str:
    """Headings, paragraphs and '- ' lists (the Answer and notes of summary.md) as HTML, sentence for sentence."""
    out = []
    for block in re.split(r"\n\s*\n", md.strip()):
        lines = block.splitlines()
        if lines and lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            out.append(f"<h{level}>{inline(lines.pop(0).lstrip('#').strip())}</h{level}>")
        if lines and all(line.startswith("- ") for line in lines):
            out.append("<ul>\n" + "\n".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "\n</ul>")
        elif lines:
            out.append(f"<p>{inline(' '.join(lines))}</p>")
    return "\n".join(out) + "\n"


def table(grid: tables.Grid, caption: str) -> str:
    """A Grid (the Markdown flavour: bold and escapes as in summary.md) as a scrollable HTML table."""
    return f'<div class="scroll">\n{grid.html(caption, inline)}</div>\n'


def guard_block(guards: GuardSummary, selection: str) -> str:
    if guards.flagged.empty:
        return f"<p>{inline(tables.guard_none_line(guards, selection))}</p>\n"
    rows = [[g["variant"], str(g["seed"]), g["checkpoint"], ", ".join(attack_label(a) for a in g["eval_attacks"]),
             g["guard"], g["reason"]] for g in tables.guard_lines(guards)]
    return table(tables.Grid(tables.GUARD_HEADER, rows, [None] * len(rows)),
                 tables.guard_caption(guards, selection, False))


def health_block(setting: Setting, selection: str) -> str:
    flagged = tables.health_frame(setting)
    if flagged.empty:
        return f"<p>{inline(tables.health_table_markdown(setting, selection).strip())}</p>\n"
    rows = [[str(h[k]) for k in ("variant", "seed", "run_id", "flag", "reason")] for h in flagged.to_dict("records")]
    caption = tables.health_table_markdown(setting, selection).strip().rsplit("\n", 1)[-1]
    return table(tables.Grid(tables.HEALTH_HEADER, rows, [None] * len(rows)), caption)


def figures(shown: list[Shown]) -> str:
    """Each figure's PNG inline (a data URI: the page needs no other file) with its caption."""
    out = []
    for f in shown:
        data = base64.b64encode(f.png.read_bytes()).decode("ascii")
        out.append(f'<figure>\n<img src="data:image/png;base64,{data}" alt="{html.escape(f.name)}">\n'
                   f"<figcaption>{html.escape(f.caption_text)}</figcaption>\n</figure>\n")
    return "".join(out)


def setting_section(setting: Setting, cells: pd.DataFrame, gaps: pd.DataFrame, per_attack: pd.DataFrame,
                    guards: GuardSummary, note: str, shown: list[Shown]) -> str:
    """One setting as summary.md shows it: the main table (`note`: its caption's extra notes), guards, training
    health, the gap tables when there is a baseline to compare with, the figures."""
    sel = setting.describe(False)
    parts = [f"<h2>{inline(sel)}</h2>\n", "<h3>Accuracy (%)</h3>\n",
             table(tables.main_grid(cells, tex=False), tables.main_caption(cells, sel, False, note)),
             "<h3>Guards</h3>\n", guard_block(guards, sel), "<h3>Training health</h3>\n", health_block(setting, sel)]
    if gaps.empty:
        parts.append(f"<p>Nothing to compare with the baseline {html.escape(method_label(setting.baseline))} "
                     "(absent, or the only method): no gap table.</p>\n")
    else:
        parts += ["<h3>Gap to the baseline</h3>\n",
                  table(tables.gap_grid(gaps, tex=False), tables.gap_caption(gaps, sel, False)),
                  "<h3>Gap per attack</h3>\n",
                  table(tables.attack_gap_grid(per_attack, tex=False), tables.attack_gap_caption(per_attack, sel, False))]
    return "".join(parts) + figures(shown)


def page(title: str, head_md: str, sections: list[str]) -> str:
    """The whole page: `head_md` (the generated-by line, notes and the Answer, as in summary.md), then sections."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{markdown_block(head_md)}" + "".join(sections) + "</body>\n</html>\n")
