"""`bench export`: a run's state dict, RobustBench's curated model_info file, provenance and README (library:
bench.export, imported with torch only when the command runs)."""
from __future__ import annotations

import click

from bench.cli.common import results_option, say, threat_model_option, usage_errors
from bench.config.names import UsageError


@click.command(name="export")
@click.argument("run_id")
@results_option
@click.option("--out", required=True, help="Directory for model.pt, model_info/<dataset>/<Linf|L2>/<name>.json, "
              "provenance.json and README.md.")
@click.option("--checkpoint", default="best", show_default=True, help="best, last or epochN (if kept).")
@threat_model_option()
@click.option("--eps", default=None, help="Which stored budget to export. Default: as in `bench eval`.")
@click.option("--name", default=None,
              help="The model's name in RobustBench's file and the file's name (letters, digits, '.', '_', '-'). "
                   "Default: lrat-bench_<method>_<train attack>_<first 8 of the run id>.")
@click.option("--link", default="", help="The paper or code URL (RobustBench's \"link\"). Default: empty.")
@click.option("--venue", default="", help="E.g. 'ICLR 2022' (RobustBench's \"venue\"; empty reads as Unpublished).")
@usage_errors
def export_command(run_id, results, out, checkpoint, threat_model, eps, name, link, venue):
    """Export a run for RobustBench: its state dict, the file RobustBench curates for a model
    (model_info/<dataset>/<Linf|L2>/<name>.json: its keys in its order, eps as "8/255", accuracies in percent,
    from the stored natural and aa rows, each from the largest point set on which it ran; "unreliable" true when
    AutoAttack ran on part of the test set or on other points than the clean accuracy), provenance.json (the
    run's record, the points behind each accuracy, the checksum) and a README showing how to load and re-check
    it; the README is also printed. Refused, with nothing written: a run that is unfinished or failed (exit 2),
    stale or damaged (exit 1, named as `bench status` names it), and an --out inside the results store.

    \b
    Example:
      bench export 3f2a9c1b --results results --out exported/at-pgd
      bench export 3f2a9c1b --out exported/at-pgd --name Lab2025AT_PGD_R18 --link https://example.org/at-pgd
    """
    from pathlib import Path

    from bench.config import parse_checkpoint, parse_eps
    from bench.config.preflight import check_writable_dir
    from bench.export import check_name, check_out, export_run
    from bench.store import Store, resolve_run_id
    from bench.store_integrity import RunsRefused

    if name is not None:
        check_name(name)  # before anything is read or written
    if not Path(results, "runs").is_dir():
        raise UsageError(f"No results store at {results} (no {results}/runs).")
    store = Store(results)
    check_out(store, out)  # before the probe below writes a file there
    check_writable_dir(out, "--out")  # before the run is read: an existing file, a read-only folder
    run = resolve_run_id(store, run_id)
    if not (store.run_dir(run) / "config.json").is_file():  # a folder under runs/ that no run wrote
        raise UsageError(f"{store.run_dir(run)} is not a run (it has no config.json): nothing to export.")
    try:
        written = export_run(store, run, out, parse_checkpoint(checkpoint), threat_model,
                             parse_eps(eps, threat_model) if eps else None, name=name, link=link, venue=venue)
    except RunsRefused as exc:  # stale or damaged: named, with what repairs it (exit 1)
        raise click.ClickException(str(exc)) from None
    for kind, path in written.items():
        say(f"{kind:>10}: {path}", err=True)  # -q: nothing (the README is among the files written)
    say(written["readme"].read_text())
