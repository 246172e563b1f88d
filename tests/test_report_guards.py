"""The evaluation guards in the report: the main table marks (LaTeX \\S, Markdown and CSV §-twins) exactly the
cells whose rows a guard flagged, the Guards table lists each flag with its reason (or says none fired), and
rows written before the guards existed are counted as not checked instead of crashing the report."""
from __future__ import annotations

import functools
import math
import shutil

import pandas as pd
import pytest

from bench.config import EvalConfig, TrainConfig
from bench.evaluation.evaluate import make_row, write_worst
from bench.evaluation.guards import MODEL_GUARDS, GuardResult, columns
from bench.report import Selection, write_report
from bench.report.frame import row_guards
from bench.store import DONE, Store, eval_group, write_json

N = 20
FLAGS = {"natural": [i < 16 for i in range(N)], "pgd20": [i < 10 for i in range(N)], "aa": [i < 8 for i in range(N)]}
REASON = "Square Attack has decreased the robust accuracy of 0.5% | see issue #58 & co_x"


@pytest.fixture
def guarded_run(prov, history, trained_files):
    """guarded_run(store, method, seed, flagged=None, *, legacy=False, worst=False) -> run_id."""
    return functools.partial(_guarded_run, prov, history, trained_files)


def _guarded_run(prov: dict, history, trained_files, store: Store, method: str, seed: int,
                 flagged: dict[str, tuple[str, str]] | None = None, *, legacy: bool = False,
                 worst: bool = False) -> str:
    """A finished run whose rows carry the guard columns as the evaluator writes them (bench.evaluation.guards.columns):
    every guard ok except `flagged` ({eval attack: (guard, reason)}); `legacy` rows predate the guards (no guard
    column at all); `worst` adds the evaluator's worst row (which merges the flags of the others). `prov`,
    `history` and `trained_files`: the conftest fixtures of the same names."""
    cfg = TrainConfig(method=method, train_attack="pgd", dataset="synthetic", model="small-cnn", eps=8 / 255,
                      epochs=2, seed=seed)
    config = {"run_id": cfg.run_id, "train": cfg.to_dict(), "provenance": prov}
    write_json(store.run_dir(cfg.run_id) / "config.json", config)
    write_json(store.run_dir(cfg.run_id) / "history.json", history(2, method, seed))
    ecfg = EvalConfig(attacks=tuple(FLAGS), test_subset=N)
    group = eval_group("best", "linf", 8 / 255, N)
    sha = trained_files(store, cfg.run_id)["best"]
    for attack, f in FLAGS.items():
        row = {**make_row(config, "best", 2, attack, f, 8 / 255, ecfg, 0.1, [], prov), "checkpoint_sha": sha}
        if not legacy:
            results = [GuardResult(g, "ok") for g in MODEL_GUARDS]
            results.append(GuardResult("autoattack", "ok") if attack == "aa"
                           else GuardResult("autoattack", "skip", "no AutoAttack in this row"))
            if attack in (flagged or {}):
                name, why = flagged[attack]
                results = [r for r in results if r.name != name] + [GuardResult(name, "flag", why)]
            row.update(columns(results))
        store.write_eval(cfg.run_id, group, attack, row, f)
    if worst:
        write_worst(store, cfg.run_id, group, config, "best", 2, 8 / 255, ecfg, prov, checkpoint_sha=sha)
    store.mark(cfg.run_id, DONE)
    return cfg.run_id


@pytest.fixture
def build(guarded_run):
    def build(root, flag: bool = True, legacy_at_seed1: bool = False, worst: bool = False) -> Store:
        """AT (PGD) and GAIRAT (PGD), seeds 0 and 1; GAIRAT seed 1's AA row flagged by the autoattack guard."""
        store = Store(root)
        for seed in (0, 1):
            guarded_run(store, "at", seed, legacy=legacy_at_seed1 and seed == 1, worst=worst)
            guarded_run(store, "gairat", seed, {"aa": ("autoattack", REASON)} if flag and seed == 1 else None,
                        worst=worst)
        return store
    return build


@pytest.fixture
def report(build):
    def report(tmp_path, **kw) -> dict[str, str]:
        """build(tmp_path / "results", **kw), then the report's text outputs {name: text}."""
        build(tmp_path / "results", **kw)
        written = write_report(tmp_path / "results", tmp_path / "out", Selection(compile_pdf=False))
        return {name: path.read_text() for name, path in written.items() if path.suffix in (".tex", ".md", ".csv")}
    return report


def cells_tex(tex: str) -> dict[tuple[str, str], str]:
    """{(row label, column header): cell} of a main-table LaTeX string (main lines only, no interval lines)."""
    lines = tex.splitlines()
    header = lines[lines.index(r"\toprule") + 1].removesuffix(r" \\").split(" & ")
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    rows = [line.removesuffix(r" \\").split(" & ") for line in body if not line.startswith(" &")]
    return {(r[0], h): c for r in rows for h, c in zip(header[1:], r[1:])}


def cells_md(md: str) -> dict[tuple[str, str], str]:
    lines = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    return {(r[0], h): c for r in rows for h, c in zip(header[1:], r[1:])}


def test_the_mark_sits_exactly_on_the_flagged_cell(tmp_path, report):
    out = report(tmp_path)
    tex, md = cells_tex(out["table.tex"]), cells_md(out["table.md"])
    assert len(tex) == len(md) == 6  # 2 rows x (Natural, PGD-20, AA)
    assert {k for k, c in tex.items() if r"\S" in c} == {("GAIRAT (PGD)", "AA")}
    assert {k for k, c in md.items() if "§" in c} == {("GAIRAT (PGD)", "AA")}
    assert tex[("GAIRAT (PGD)", "AA")] == r"\textbf{40.00} $\pm$ 0.00$^{\S}$"  # ties AT: both bold
    assert tex[("GAIRAT (PGD)", "PGD-20")] == r"\textbf{50.00} $\pm$ 0.00$^{\dagger}$"  # the seen mark alone
    assert "guard flagged: see the Guards table." in out["table.tex"] and r"\S: guard" in out["table.tex"]
    assert "§: guard flagged: see the Guards table." in out["table.md"]
    csv = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False).set_index(["variant", "eval_attack"])
    assert csv.loc[("GAIRAT (PGD)", "aa"), "guards_flagged"] == "autoattack"
    assert (csv["guards_flagged"] != "").sum() == 1


def test_seen_and_guard_marks_combine(tmp_path, guarded_run):
    store = Store(tmp_path / "results")
    guarded_run(store, "at", 0, {"pgd20": ("zero_grad", "3 of 20 points have an exactly zero input gradient")})
    write_report(tmp_path / "results", tmp_path / "out", Selection(compile_pdf=False))
    tex = cells_tex((tmp_path / "out" / "table.tex").read_text())
    md = cells_md((tmp_path / "out" / "table.md").read_text())
    assert tex[("AT (PGD)", "PGD-20")].endswith(r"$^{\dagger\S}$")
    assert md[("AT (PGD)", "PGD-20")].startswith("**50.00** † §")


def test_guards_table_lists_the_flag_with_its_reason(tmp_path, report):
    out = report(tmp_path)
    flagged = pd.read_csv(tmp_path / "out" / "guards.csv")
    assert flagged[["variant", "method", "train_attack", "seed", "checkpoint", "eval_attack", "guard",
                    "reason"]].values.tolist() == \
        [["GAIRAT (PGD)", "gairat", "pgd", 1, "best", "aa", "autoattack", REASON]]
    md_rows = [line for line in out["guards.md"].splitlines() if line.startswith("| GAIRAT")]
    assert md_rows == [r"| GAIRAT (PGD) | 1 | best | AA | autoattack | Square Attack has decreased the robust "
                       r"accuracy of 0.5% \| see issue #58 & co_x |"]
    assert "1 of the 12 checked rows; no row predates the guards" in out["guards.md"]
    tex_row = next(line for line in out["guards.tex"].splitlines() if line.startswith("GAIRAT"))
    assert tex_row == (r"GAIRAT (PGD) & 1 & best & AA & autoattack & Square Attack has decreased the robust "
                       r"accuracy of 0.5\% | see issue \#58 \& co\_x \\")
    assert r"\label{tab:guards}" in out["guards.tex"] and r"\begin{longtable}" in out["guards.tex"]
    assert r"\input{guards.tex}" in out["report.tex"] and r"\usepackage{longtable}" in out["report.tex"]
    summary = out["summary.md"]
    assert "### Guards" in summary and md_rows[0] in summary
    assert summary.index("### Accuracy") < summary.index("### Guards")


def test_worst_inherits_the_flag_but_is_not_listed_twice(tmp_path, report):
    out = report(tmp_path, worst=True)
    tex = cells_tex(out["table.tex"])
    assert {k for k, c in tex.items() if r"\S" in c} == {("GAIRAT (PGD)", "AA"), ("GAIRAT (PGD)", "Worst")}
    flagged = pd.read_csv(tmp_path / "out" / "guards.csv")
    assert flagged[["seed", "eval_attack", "guard"]].values.tolist() == [[1, "aa", "autoattack"]]
    assert "1 of the 12 checked rows" in out["guards.md"]  # the worst rows are derived: not counted


def test_a_clean_store_says_no_guard_fired(tmp_path, report):
    out = report(tmp_path, flag=False)
    assert out["guards.md"] == ("Guards on synthetic, small-cnn, L∞ ε = 8/255, 20 test points, best checkpoint (highest "
                                "validation PGD accuracy): no guard fired on the 12 checked rows; no row predates the guards.\n")
    assert out["guards.tex"].startswith(r"\paragraph{Guards.}") and "no guard fired on the 12 checked rows" in \
        out["guards.tex"]
    assert pd.read_csv(tmp_path / "out" / "guards.csv").empty
    assert "§" not in out["table.md"] and r"\S" not in out["table.tex"] and "Guards table" not in out["table.tex"]
    assert "no guard fired on the 12 checked rows" in out["summary.md"]


def test_rows_without_guard_columns_are_counted_as_not_checked(tmp_path, report):
    out = report(tmp_path, legacy_at_seed1=True)
    assert "1 of the 9 checked rows; 3 rows predate the guards (not checked)" in out["guards.md"]
    assert {k for k, c in cells_md(out["table.md"]).items() if "§" in c} == {("GAIRAT (PGD)", "AA")}
    clean = report(tmp_path / "clean", flag=False, legacy_at_seed1=True)
    assert "no guard fired on the 9 checked rows; 3 rows predate the guards (not checked)." in clean["guards.md"]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results["guard_eval_mode"].isna().sum() == 3  # the legacy rows stay as they are in results.csv


def test_row_guards_reads_the_stored_format():
    assert row_guards({"accuracy": 0.5}) is None  # written before the guards existed
    assert row_guards({"guard_eps": math.nan, "guards_flagged": math.nan}) is None  # a DataFrame's missing cells
    assert row_guards({"guard_eps": "ok", "guard_square": "skip: no square row", "guards_flagged": ""}) == {}
    assert row_guards({"guard_monotone": "flag: aa 0.6 > pgd20 0.4: masking?", "guard_eps": "ok",
                       "guards_flagged": "monotone"}) == {"monotone": "aa 0.6 > pgd20 0.4: masking?"}
    assert row_guards({"guard_logits": "flag: probabilities"}) == {"logits": "probabilities"}  # no guards_flagged


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI installs it)")
def test_report_with_flags_compiles(tmp_path, build):
    build(tmp_path / "results", worst=True)
    written = write_report(tmp_path / "results", tmp_path / "out", Selection())
    assert written["report.pdf"].read_bytes()[:5] == b"%PDF-"
