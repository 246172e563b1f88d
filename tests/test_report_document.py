"""The whole report: every output written, the standalone document compiles with pdflatex, summary.md is
self-contained, captions state the selection, and the report path never imports torch."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.report import Selection, load_frame, parse_selection, write_report
from bench.store import Store

HAS_PDFLATEX = shutil.which("pdflatex") is not None


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, paper_store):
    root = tmp_path_factory.mktemp("results")
    paper_store(root, seeds=(0, 1), n=80, extra=True)
    return root


@pytest.mark.skipif(not HAS_PDFLATEX, reason="pdflatex is not installed (CI installs it)")
def test_standalone_document_compiles_and_includes_every_table_and_figure(store_root, tmp_path):
    written = write_report(store_root, tmp_path, Selection())
    pdf = written["report.pdf"]
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    tex = written["report.tex"].read_text()
    for name in ("table", "gap_table", "attack_gaps"):
        assert rf"\input{{{name}.tex}}" in tex and (tmp_path / f"{name}.tex").exists()
    for fig in ("fig_heatmap", "fig_attack_rank", "fig_gap", "fig_curves", "fig_weights"):
        assert f"{{{fig}.pdf}}" in tex and (tmp_path / f"{fig}.png").exists()
    assert not list(tmp_path.glob("report*.aux")) and not list(tmp_path.glob("report*.log"))  # leftovers cleaned
    assert not list(tmp_path.glob("*.tmp"))  # every file written whole, renamed into place


@pytest.mark.skipif(not HAS_PDFLATEX, reason="pdflatex is not installed (CI installs it)")
def test_the_pdf_is_compiled_until_its_references_settle_and_escapes_every_special(tmp_path, monkeypatch):
    """A forward reference is '??' after one pdflatex pass; compile_pdf reruns while the log asks (twice here,
    not more: the second pass settles). Text with every LaTeX special character, escaped by tex_escape,
    compiles."""
    import bench.report.document as document
    from bench.report.document import compile_pdf
    from bench.report.frame import tex_escape

    passes = []
    real_run = subprocess.run
    monkeypatch.setattr(document.subprocess, "run", lambda *a, **k: passes.append(a) or real_run(*a, **k))

    tex = tmp_path / "doc.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\n"
                   "See table~\\ref{tab:later}.\n" + tex_escape(r"a\b {c} $d & #e ^f _g %h ~i") + "\n\\newpage\n"
                   "\\begin{table}\\caption{x}\\label{tab:later}\\end{table}\n\\end{document}\n")
    pdf = compile_pdf(tex)
    assert pdf == tmp_path / "doc.pdf" and pdf.read_bytes()[:5] == b"%PDF-" and len(passes) == 2
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout \
        if shutil.which("pdftotext") else None
    if text is not None:
        assert "See table 1." in text and "??" not in text
        # pdftotext gives ^ and ~ as the accent glyphs the font draws, and drops the drawn underscore
        def norm(t: str) -> str:
            return re.sub(r"\s+", " ", t.replace("\u02c6", "^").replace("\u02dc", "~").replace("_", " "))
        assert norm("a\\b {c} $d & #e ^f _g %h ~i") in norm(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.pdf", "doc.tex"]  # build files cleaned


@pytest.mark.skipif(not HAS_PDFLATEX, reason="pdflatex is not installed (CI installs it)")
def test_a_failed_compile_leaves_no_stale_pdf(tmp_path):
    from bench.report.document import ReportError, compile_pdf

    tex = tmp_path / "report.tex"
    (tmp_path / "report.pdf").write_bytes(b"%PDF- an older report")
    tex.write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}\n")
    with pytest.raises(ReportError, match="report-build.log"):
        compile_pdf(tex)
    assert not (tmp_path / "report.pdf").exists() and (tmp_path / "report-build.log").exists()


def test_every_output_and_a_self_contained_summary(store_root, tmp_path):
    written = write_report(store_root, tmp_path, Selection(compile_pdf=False))
    expected = {f"{t}.{ext}" for t in ("table", "guards", "health", "gap_table", "attack_gaps")
                for ext in ("tex", "md", "csv")}
    expected |= {f"fig_{f}.{ext}" for f in ("heatmap", "attack_rank", "gap", "curves", "weights")
                 for ext in ("pdf", "png")}
    expected |= {"results.csv", "flags.csv.gz", "attack_rank.csv", "report.tex", "summary.md", "report.html"}
    assert set(written) == expected and all(p.exists() for p in written.values())
    summary = written["summary.md"].read_text()
    assert "- **GAIRAT (PGD)** vs AT (PGD) (2 seeds): on the seen attacks (PGD-20)" in summary
    assert "no verdict: 2 seeds are too few" in summary
    assert "| Method (train attack) | Natural | PGD-20 | CW-20 | AA | Worst |" in summary
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", summary):
        assert (tmp_path / image).exists()  # links resolve next to summary.md
    assert "mail" not in (tmp_path / "results.csv").read_text()  # unfinished run: invisible


def test_bench_report_writes_the_attack_rank_figure(store_root, tmp_path):
    """`bench report` writes fig_attack_rank.{pdf,png} and attack_rank.csv, whose ranks are those of
    table.csv's means (1 + the number of the row's attacks with a lower mean; natural and worst not ranked),
    and report.tex includes the figure with a caption saying what a rank is, over how many seeds and points."""
    result = CliRunner().invoke(main, ["report", "--results", str(store_root), "--out", str(tmp_path), "--no-pdf"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig_attack_rank.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "fig_attack_rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = pd.read_csv(tmp_path / "table.csv")
    cells = cells[~cells.eval_attack.isin(["natural", "worst"])]
    ranks = pd.read_csv(tmp_path / "attack_rank.csv")
    assert len(ranks) == len(cells) == 9 and set(ranks.eval_attack) == {"pgd20", "cw20", "aa"}
    for r in ranks.itertuples():
        row = cells[cells.variant == r.variant]
        assert r.rank == 1 + (row["mean"] < r.accuracy - 1e-9).sum()
        assert r.accuracy == pytest.approx(row.loc[row.eval_attack == r.eval_attack, "mean"].item())
    tex = (tmp_path / "report.tex").read_text()
    figure = tex[tex.index("{fig_attack_rank.pdf}"):]
    caption = figure[:figure.index("\\end{minipage}")]
    assert "rank 1 = the strongest attack (the lowest accuracy)" in caption
    assert "mean over 2 seeds per row, on the 80 test points" in caption
    assert "![attack_rank](fig_attack_rank.png)" in (tmp_path / "summary.md").read_text()


def test_flags_csv_gz_holds_every_point_of_every_row_behind_the_tables(store_root, tmp_path):
    """flags.csv.gz (read by pandas as is): one line per test point of every selected stored row, the row's
    identity, and per row the mean of `robust` is the stored accuracy and the sequence is the stored flags.
    With --methods gairat: GAIRAT's rows and the baseline AT's (the tables' reference row), not LRAT's."""
    written = write_report(store_root, tmp_path / "all", Selection(compile_pdf=False))
    flags = pd.read_csv(written["flags.csv.gz"], dtype={"run_id": str})
    assert list(flags.columns) == ["run_id", "method", "train_attack", "dataset", "model", "seed", "checkpoint",
                                   "checkpoint_sha", "eval_attack", "threat_model", "eval_eps", "eval_precision",
                                   "n_eval", "test_points", "points_sha", "point", "robust"]
    stored = load_frame(store_root)
    assert len(stored) == 3 * 2 * 5  # 3 variants x 2 seeds x (natural, pgd20, cw20, aa, worst), mail unfinished
    assert len(flags) == 80 * len(stored) and set(flags.robust) == {0, 1}
    by_row = flags.groupby(["run_id", "checkpoint", "eval_attack"])
    assert by_row.size().eq(80).all() and len(by_row) == len(stored)
    for row in stored.to_dict("records"):
        got = by_row.get_group((row["run_id"], row["checkpoint"], row["eval_attack"]))
        assert got["robust"].mean() == pytest.approx(row["accuracy"])
        assert got["point"].tolist() == list(range(80))
        assert "".join(map(str, got["robust"])) == row["flags"]
        assert got[["method", "train_attack", "seed", "eval_eps", "n_eval"]].drop_duplicates().values.tolist() == [
            [row["method"], row["train_attack"], row["seed"], pytest.approx(row["eval_eps"]), 80]]
    one = write_report(store_root, tmp_path / "gairat", parse_selection(methods="gairat", compile_pdf=False))
    assert set(pd.read_csv(one["flags.csv.gz"]).method) == {"gairat", "at"}


def test_report_files_honour_the_umask(store_root, tmp_path, umask):
    """Report files are shared like the store's: 0644 under umask 022, 0600 under 077 (what open() gives)."""
    written = write_report(store_root, tmp_path / "out", Selection(compile_pdf=False))
    assert {p.stat().st_mode & 0o777 for p in written.values()} == {0o666 & ~umask}


def test_captions_state_the_selection(store_root, tmp_path):
    sel = parse_selection(methods="gairat", train_attacks="pgd", checkpoint="best")
    write_report(store_root, tmp_path, sel)
    table = (tmp_path / "table.tex").read_text()
    assert "synthetic, small-cnn (selected methods gairat; training attacks pgd), $\\ell_\\infty$" in table
    assert "best checkpoint" in table and "2 seeds per row" in table
    assert "80 test points" in table
    assert "AT (PGD): the baseline for the gaps, shown although outside the selection" in table
    assert "LRAT" not in table
    result = CliRunner().invoke(main, ["report", "--results", str(store_root), "--out", str(tmp_path / "b"),
                                       "--no-pdf", "--checkpoint", "last"])
    assert result.exit_code == 2 and "No finished runs match" in result.output  # only 'best' was stored


def test_report_path_never_imports_torch(store_root, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from bench.cli import main
        result = CliRunner().invoke(main, ["report", "--results", {str(store_root)!r}, "--out", {str(tmp_path)!r},
                                           "--no-pdf"])
        print(result.exit_code, "torch" in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["0", "False"], out.stdout
    assert (tmp_path / "table.tex").exists()


def test_two_settings_get_separate_files(tmp_path, add_run):
    store = Store(tmp_path / "r")
    for model in ("small-cnn", "resnet18"):
        add_run(store, "at", "pgd", 0, {"natural": [True, True], "pgd20": [True, False]}, model=model)
    written = write_report(tmp_path / "r", tmp_path / "o", Selection(compile_pdf=False))
    tables = sorted(n for n in written if n.startswith("table") and n.endswith(".tex"))
    assert tables == ["table-synthetic-resnet18-linf-eps0p03137-n2.tex", "table-synthetic-small-cnn-linf-eps0p03137-n2.tex"]
    assert json.dumps(sorted(written)).count("fig_heatmap") == 4  # pdf + png per setting


@pytest.mark.skipif(not HAS_PDFLATEX, reason="pdflatex is not installed (CI installs it)")
def test_a_document_that_does_not_compile_is_an_error_with_the_log(tmp_path):
    from bench.report.document import ReportError, compile_pdf

    tex = tmp_path / "broken.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}\n")
    with pytest.raises(ReportError, match="Undefined control sequence"):
        compile_pdf(tex)


@pytest.mark.parametrize("differ", ["eval eps", "test points"])
def test_settings_that_differ_in_one_number_keep_their_own_files(tmp_path, add_run, differ):
    """Two settings alike but for the eval budget (0.1 vs 0.2) or the test-subset size (2 vs 4 points): every
    table and figure keeps the whole setting in its name (no dot cut off as an extension), so neither
    overwrites the other, and report.tex includes each file once, every one of them written."""
    store = Store(tmp_path / "r")
    for k, (eps, n) in enumerate([(0.1, 2), (0.2, 2)] if differ == "eval eps" else [(0.1, 2), (0.1, 4)]):
        flags = {"natural": [True] * n, "pgd20": [j % 2 == k for j in range(n)]}
        for method in ("at", "gairat"):
            add_run(store, method, "pgd", 0, flags, eps=eps)
    out = tmp_path / "o"
    written = write_report(tmp_path / "r", out, Selection(compile_pdf=False))
    for fig in ("fig_heatmap", "fig_gap"):
        names = [n for n in written if n.startswith(fig + "-")]
        assert len(names) == 4 and all("." not in n.removesuffix(".pdf").removesuffix(".png") for n in names), names
    training = {n for n in written if n.startswith(("fig_curves", "fig_weights"))}
    assert training == {"fig_curves.pdf", "fig_curves.png", "fig_weights.pdf", "fig_weights.png"}  # once
    assert len({p.resolve() for p in written.values()}) == len(written)  # no two outputs share a file
    tex = written["report.tex"].read_text()
    included = re.findall(r"\\input\{([^}]+)\}", tex) + re.findall(r"\\includegraphics(?:\[[^]]*\])?\{([^}]+)\}", tex)
    assert len(included) == 2 * (5 + 2) + 2  # per setting: 5 tables (health too) and 2 figures; training once
    assert len(set(included)) == len(included), sorted(included)
    assert all((out / name).exists() for name in included), [n for n in included if not (out / n).exists()]
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", written["summary.md"].read_text())
    assert len(images) == len(set(images)) == 6 and all((out / i).exists() for i in images)


# ---- reproducible outputs, rounded CSVs, training figures once, true captions (issue 25) ----------------------

def test_two_reports_on_one_store_are_byte_identical(store_root, tmp_path):
    """`bench report` twice on one store, into two folders: every file the same bytes, report.pdf and the
    figures' PDFs included (no creation date, no PDF /ID; pdflatex under a fixed SOURCE_DATE_EPOCH)."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        args = ["report", "--results", str(store_root), "--out", str(out)] + ([] if HAS_PDFLATEX else ["--no-pdf"])
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    assert "report.html" in names and ("report.pdf" in names or not HAS_PDFLATEX)
    differ = [n for n in names if (outs[0] / n).read_bytes() != (outs[1] / n).read_bytes()]
    assert not differ, differ
    assert b"CreationDate" not in (outs[0] / "fig_gap.pdf").read_bytes()


COUNT_CELL = re.compile(r"(^|_)(n_\w+|b|c|rank|seeds_lower|n_pairs|seed)$")


def _significant(cell: str) -> int:
    mantissa = cell.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


def test_csv_numbers_are_rounded_to_what_they_mean(store_root, tmp_path):
    """The report's own CSVs: accuracies and gaps to 0.01 points, p-values to 3 significant digits, counts as
    integers, per_seed strings untouched; no float noise (34.300000000000004). results.csv holds the stored rows
    as stored and is not one of them."""
    written = write_report(store_root, tmp_path, Selection(compile_pdf=False))
    csvs = [n for n in written if n.endswith(".csv") and n != "results.csv"]
    assert {"table.csv", "gap_table.csv", "attack_gaps.csv", "attack_rank.csv"} <= set(csvs)
    checked = 0
    for name in csvs:
        frame = pd.read_csv(written[name], dtype=str, keep_default_na=False)
        for col in frame.columns:
            if col in ("run_id", "checkpoint_sha", "points_sha", "code_fingerprints") or col.endswith("per_seed"):
                continue
            for cell in frame[col]:
                try:
                    float(cell)
                except ValueError:
                    continue  # a label, a flag, an empty cell
                checked += 1
                if re.search(r"(^|_)p$", col):
                    assert _significant(cell) <= 3, (name, col, cell)
                elif COUNT_CELL.search(col):
                    assert re.fullmatch(r"\d+", cell), (name, col, cell)
                else:
                    assert re.fullmatch(r"-?\d+(\.\d{1,2})?", cell), (name, col, cell)
    assert checked > 200
    gaps = pd.read_csv(written["gap_table.csv"])
    assert gaps["seen_per_seed"].str.fullmatch(r"-?\d+\.\d\d;-?\d+\.\d\d").all()  # two seeds, as written


def test_training_figures_once_with_training_captions(tmp_path, add_run):
    """Two settings (the demo's two point sets) share their runs: fig_curves and fig_weights are written once,
    after the settings, captioned as training plots (no test points); the setting figures keep their points."""
    store = Store(tmp_path / "r")
    for n in (8, 4):
        for method in ("at", "gairat"):
            add_run(store, method, "pgd", 0, {"natural": [True] * n, "pgd20": [True, False] * (n // 2)})
    written = write_report(tmp_path / "r", tmp_path / "o", Selection(compile_pdf=False))
    assert sorted(n for n in written if n.startswith(("fig_curves", "fig_weights"))) == [
        "fig_curves.pdf", "fig_curves.png", "fig_weights.pdf", "fig_weights.png"]
    tex = written["report.tex"].read_text()
    assert tex.index("section*{Training}") > tex.rindex("fig_gap")
    for fig in ("fig_curves", "fig_weights"):
        caption = tex[tex.index(f"{{{fig}.pdf}}"):]
        caption = caption[:caption.index("\\end{minipage}")]
        assert "training plot" in caption or "Training curves" in caption
        assert "test point" not in caption and "one seed per line" in caption
    summary = written["summary.md"].read_text()
    assert summary.count("![curves](fig_curves.png)") == 1 and "## Training" in summary


def test_captions_state_only_what_the_figures_show(tmp_path, paper_store):
    """One seed: no 'mean ± std over 1 seed' nor 'mean over 1 seed'; fig_gap's caption names exactly the gap kinds
    in its legend (no related attack here: 'related' is not named)."""
    import bench.report.plots as plots

    paper_store(tmp_path / "r", seeds=(0,), n=40)
    written = write_report(tmp_path / "r", tmp_path / "o", Selection(compile_pdf=False))
    text = "\n".join(written[n].read_text() for n in ("report.tex", "summary.md", "table.md", "table.tex"))
    assert "over 1 seed" not in text and "one seed per row" in text
    gaps = pd.read_csv(written["gap_table.csv"])
    legend = [t.get_text() for t in plots.gap_figure(gaps, "at").legends[0].get_texts()]
    assert legend == ["seen attacks", "unseen attacks (mean)", "unseen attacks (worst case)"]
    caption = next(line for line in written["summary.md"].read_text().splitlines()
                   if line.startswith("*Gap to the baseline"))
    assert "on seen attacks, unseen attacks (mean) and unseen attacks (worst case)," in caption
    assert "related" not in caption and "one seed-matched pair of runs per row" in caption
