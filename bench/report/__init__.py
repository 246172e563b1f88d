"""`bench report`: from the finished runs in a store to paper-ready tables, plots, a compiled PDF and a
Markdown summary that answer the LRAT paper's question (does a method that wins on the attack it trained
with lose on the attacks it never saw?). Never imports torch: it reads the store's JSON files only.

The package, bottom to top (each module imports only the ones above it in this list, never this package):

- frame.py: the store's rows (`load_frame`), the selection (`Selection`, `parse_selection`, `select`), the
  settings and variants the tables are made of (`build_settings`), labels and LaTeX escaping;
- stats.py: mean and spread over seeds, bootstrap intervals, the gaps to a baseline (bench.stats.paired_gap);
- tables.py and plots.py: the tables (LaTeX, Markdown, CSV) and the figures (matplotlib);
- captions.py, figures.py: the figures' captions, and their files (per setting; the training ones once);
- html.py: report.html, the self-contained page;
- document.py: every output file of a report, report.tex and its compilation, summary.md, report.html;
- here: `write_report`, the entry point of `bench report`.
"""
from __future__ import annotations

from pathlib import Path

from bench.config.names import UsageError
from bench.store_integrity import RunsRefused, refusal_lines, usable_runs
from bench.report.frame import (Selection, atomic_output, build_settings, hold_folder, load_frame, parse_selection,
                                report_rows, select, sweep_temp_files)
from bench.store import Store

__all__ = ["RunsRefused", "Selection", "load_frame", "parse_selection", "write_report"]


def write_report(results: str | Path, out: str | Path, selection: Selection = Selection(),
                 skip_damaged: bool = False) -> dict[str, Path]:
    """Everything under `out`: results.csv (every row of the store's usable runs, all checkpoints, without
    flags), flags.csv.gz (the per-test-point robust flags of the rows behind the tables), the tables of the
    selection (tex/csv/md), the figures (pdf/png), report.tex and report.pdf (when pdflatex is installed),
    summary.md. Returns {name: path} of what was written. Bad selections raise UsageError before anything is
    written; a finished run that is stale or damaged (bench/store_integrity.py) raises RunsRefused naming it,
    unless `skip_damaged` leaves it out (summary.md and report.tex then say which and why)."""
    from bench.report.document import write_flags, write_outputs  # matplotlib: loaded only when a report is written

    store = Store(results)
    usable, unusable = usable_runs(store, skip_damaged,
                                   "`bench report --skip-damaged` leaves them out and says so in the report")
    df = load_frame(results, run_ids=usable)
    if df.empty:
        left = f" ({len(unusable)} left out by --skip-damaged)" if unusable else ""
        raise UsageError(f"No finished runs in {results}{left}: run `bench run` first (or point --results at a store).")
    chosen, baseline_pool = select(df, selection, results)
    settings = build_settings(store, chosen, baseline_pool, selection)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(out)  # the temporary files of a report killed mid-write
    with hold_folder(out):
        written = {"results.csv": out / "results.csv"}
        cols = [c for c in df.columns if c != "flags"]
        with atomic_output(written["results.csv"]) as tmp:
            df[cols].sort_values(["method", "train_attack", "seed", "checkpoint", "eval_attack"]).to_csv(tmp,
                                                                                                          index=False)
        written["flags.csv.gz"] = write_flags(report_rows(chosen, baseline_pool, settings), out / "flags.csv.gz")
        written.update(write_outputs(settings, selection, out, left_out=refusal_lines(store, unusable, brief=True)))
    return written
