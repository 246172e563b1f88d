"""`bench status`: where every cell stands (library: bench.execution.status). Reads the store and the lock
files only; with --config, the matrix file's cells are resolved over `bench run`'s defaults (RUN_DEFAULTS)."""
from __future__ import annotations

import click

from bench.cli.common import RUN_DEFAULTS, echo_json, json_option, results_option, usage_errors
from bench.config.names import UsageError
from bench.execution.evaluations import evaluations_text, stored_evaluations
from bench.execution.status import STATES, counts, fingerprint_line, format_table, statuses, totals


@click.command(name="status")
@results_option
@click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A matrix file: also list its cells that have not started (as pending).")
@click.option("--state", "only", type=click.Choice(STATES), default=None, help="Show only cells in this state.")
@json_option("the cells and the totals")
@usage_errors
def status(results: str, config: str | None, only: str | None, as_json: bool) -> None:
    """List the cells in a results store as finished / running (lock held) / failed / pending / stale (rows
    computed on another checkpoint file than the one stored) / damaged (a stored file missing, truncated,
    garbled, edited or refused: named, with the reason and what repairs it), with reasons, and the
    training-health flags of a run (val_at_chance, loss_stuck, nonfinite_loss: docs/results.md). The verdict is
    the one `bench report` and `bench export` use. Under each cell, the evaluations it has stored: checkpoint,
    attacks and test points (best: natural,pgd20,cw20 @1000; best: aa @50). Writes nothing: a read-only store
    works. A last line names the code fingerprints when the runs were trained by different code.

    \b
    Example:
      bench status --results results
      bench status --results results --config experiments/smoke.toml --state pending
      bench status --json | jq -r '.cells[] | select(.state == "failed") | .run_id'
    """
    from pathlib import Path

    from bench.store import Store

    if Path(results).exists() and not Path(results).is_dir():
        raise UsageError(f"--results '{results}' is a file, not a results folder.")
    if not Path(results).exists() and config is None:  # a typo must not read as "nothing has run yet"
        raise UsageError(f"No such results folder '{results}'. (With --config, the matrix's cells are listed as "
                         f"pending before the first run.)")
    cells = None
    if config is not None:
        from bench.config.matrix_file import load_matrix_file
        from bench.config.matrix_merge import merge
        from bench.config.matrix_cells import resolve

        cells = resolve(merge(RUN_DEFAULTS, load_matrix_file(config), {}))
    store = Store(results)
    rows = statuses(store, cells)
    shown = [r for r in rows if only is None or r.state == only]
    found = [stored_evaluations(store.run_dir(r.run_id)) for r in shown]  # from the file names: instant
    if as_json:  # the cells shown, the totals of all (as the text)
        echo_json({"results": results, "results_exists": Path(results).exists(),
                   "cells": [{**r.to_dict(), "evaluations": [e.to_dict() for e in f]} for r, f in zip(shown, found)],
                   "totals": totals(rows)})
        return
    if not rows:
        click.echo(f"No runs in {results}/ yet.")
        return
    for line, evaluations in zip(format_table(shown), found):
        click.echo(line)
        if evaluations:  # under its cell: which checkpoints, attacks and test points are stored
            click.echo(f"{'':11}evaluations: {evaluations_text(evaluations)}")
    click.echo(f"{len(rows)} cells: {counts(rows)}")
    if mixed := fingerprint_line(shown):  # their weights came from different training code
        click.echo(mixed)
    if not Path(results).exists():
        click.echo(f"(No results folder '{results}' yet: nothing has run.)")
