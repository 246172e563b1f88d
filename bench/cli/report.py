"""`bench report`: tables, plots and the PDF from the finished runs in a store (library: bench.report).
Torch-free: neither this module nor the report imports it."""
from __future__ import annotations

import click

from bench.cli.common import DEFAULT_REPORTS, results_option, say, usage_errors
from bench.config.catalog import DEFAULTS


@click.command(name="report")
@results_option
@click.option("--out", default=DEFAULT_REPORTS, show_default=True, help="Where tables, plots and the PDF go.")
@click.option("--dataset", "datasets", default="", help="Comma-separated datasets (default: all in the store).")
@click.option("--model", "models", default="", help="Comma-separated models (default: all in the store).")
@click.option("--methods", default="", help="Comma-separated methods (default: all in the store).")
@click.option("--train-attack", "train_attacks", default="",
              help="Comma-separated training attacks, e.g. pgd,cw,saa+cw (default: all in the store).")
@click.option("--checkpoint", default="best", show_default=True,
              help="best: highest validation PGD accuracy; last: the final epoch; epochN: after epoch N, if kept.")
@click.option("--baseline", default=DEFAULTS.baseline, show_default=True,
              help="Method the gaps are measured against: its run with the same training attack, else its PGD run.")
@click.option("--no-pdf", is_flag=True, help="Write report.tex but do not run pdflatex.")
@click.option("--skip-damaged", is_flag=True,
              help="Leave out finished runs whose stored results cannot be used (stale or damaged), and name them "
                   "with the reason in summary.md and report.tex, instead of refusing the report.")
@usage_errors
def report(results, out, datasets, models, methods, train_attacks, checkpoint, baseline, no_pdf, skip_damaged):
    """Paper-ready tables (LaTeX, Markdown, CSV), the seen/related/unseen gap to a baseline with intervals and
    p-values, plots, a compiled PDF and summary.md, from the finished runs in the store (no torch needed).
    A finished run whose rows cannot be used (`bench status` says stale or damaged: a row computed on another
    checkpoint, a file missing, truncated or edited) is refused by name, exit 1, unless --skip-damaged.

    \b
    Example:
      bench report --results results --out reports
      bench report --dataset fashion-mnist --methods at,gairat,lrat --train-attack pgd,cw --checkpoint last
    """
    from bench.config.preflight import check_writable_dir
    from bench.report import RunsRefused, parse_selection, write_report
    from bench.report.document import ReportError

    check_writable_dir(out, "--out")  # an existing file, a read-only folder: refused before any work
    selection = parse_selection(checkpoint=checkpoint, datasets=datasets, models=models, methods=methods,
                                train_attacks=train_attacks, baseline=baseline, compile_pdf=not no_pdf)
    try:
        written = write_report(results, out, selection, skip_damaged=skip_damaged)
    except (ReportError, RunsRefused) as exc:
        raise click.ClickException(str(exc)) from None
    for name, path in written.items():
        say(f"{name:>24}: {path}")
