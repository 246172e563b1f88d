"""The `bench` command: thin glue that parses names into typed configs (the only place strings are parsed)
and hands them to the library. Heavy imports (torch) happen inside the commands that need them, so
`bench report` and `bench --help` stay fast."""
from __future__ import annotations

import functools
import logging
import sys

import click

from bench.config.names import UsageError

DEFAULT_RESULTS = "results"
DEFAULT_REPORTS = "reports"


def usage_errors(fn):
    """Turn the library's UsageError into click's (exit code 2, message, nothing run)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(quiet: bool) -> None:
    """lrat-bench: train and evaluate adversarial-training methods under a train-attack x eval-attack matrix.

    \b
    Example:
      bench run --methods at,irat,lrat --train-attack pgd
      bench report
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def _given(ctx: click.Context) -> set[str]:
    """The parameters the user actually typed (or set through the environment): these override the file."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


@main.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A matrix file (TOML, see experiments/smoke.toml); flags you give override it.")
@click.option("--methods", default="at", show_default=True, help="Comma-separated methods (see `bench ls`).")
@click.option("--train-attack", "train_attack", default="pgd", show_default=True,
              help="Comma-separated training attacks, one cell each; '+' combines attacks in one LRAT run (saa+cw).")
@click.option("--method-param", "method_params", multiple=True, metavar="METHOD.NAME=VALUE",
              help="Override a method parameter, e.g. gairat.lam=0 (repeatable).")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="Comma-separated datasets, one cell each.")
@click.option("--model", default=None, help="Comma-separated models, one cell each. Default: small-cnn for 28x28 "
              "data, resnet18 for 32x32.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=None, help="SGD learning rate. Default: 0.05 for small-cnn, 0.1 otherwise.")
@click.option("--lr-scale", type=click.Choice(["none", "linear"]), default="none", show_default=True,
              help="linear: lr x batch-size / 128, to scale batch size and learning rate together.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Training (and training-attack) precision; bf16 autocast, never fp16. Part of the run id.")
@click.option("--weight-decay", type=float, default=2e-4, show_default=True)
@click.option("--eps", default=None, help="L-inf training budget in pixel units: 8/255 or 0.0314. Default: 0.1 for "
              "(fashion-)mnist, 8/255 otherwise.")
@click.option("--attack-steps", type=int, default=10, show_default=True, help="K of the pgd/cw training attacks.")
@click.option("--step-size", default=None, help="Training attack step; default eps/4.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, one cell each.")
@click.option("--eval-attacks", default="natural,pgd20,cw20,aa", show_default=True)
@click.option("--threat-model", type=click.Choice(["linf", "l2"]), default="linf", show_default=True,
              help="Threat model of the evaluation attacks.")
@click.option("--eval-eps", default=None, help="Evaluation budget. Default: the training eps (linf).")
@click.option("--train-subset", type=int, default=None, help="Class-balanced training subset size.")
@click.option("--val-size", type=int, default=512, show_default=True, help="Validation split carved from training.")
@click.option("--test-subset", type=int, default=None, help="Test points to evaluate (class-balanced; first N on CIFAR).")
@click.option("--eval-batch-size", type=int, default=256, show_default=True,
              help="Evaluation batch (AutoAttack's too): as large as fits; recorded, its random starts depend on it.")
@click.option("--eval-precision", type=click.Choice(["fp32", "tf32"]), default="fp32", show_default=True,
              help="Reported numbers in fp32 with TF32 off; tf32 is faster on GPUs (its own eval group, recorded).")
@click.option("--checkpoints", default="best,last", show_default=True,
              help="Checkpoints to evaluate: best (on the validation split), last, epochN (kept while training, "
                   "e.g. epoch60); `bench eval` adds best/last later.")
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results store directory.")
@click.option("--data-dir", default=None, help="Where datasets live (also $BENCH_DATA_DIR).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--channels-last", is_flag=True, help="NHWC memory layout (GPU speed; not part of the run id).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (GPU speed; slower on CPUs).")
@click.option("--force", is_flag=True, help="Redo cells that are already finished.")
@click.option("--dry-run", is_flag=True, help="Print the cells, their state and the work left; run nothing.")
@click.option("--speed-json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--dry-run: turn the work into hours with a `bench speed --json` file's figures.")
@click.option("--grad-steps-per-s", type=float, default=None, help="Measured throughput of one worker in "
              "example-gradient steps/s (PGD-10 AT at R images/s = 11 R): --dry-run then estimates hours.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells one after another here; ray: each cell a Ray task (pip install 'lrat-bench[ray]').")
@click.option("--ray-address", default=None, help="Ray cluster to join (e.g. auto); default: a local instance.")
@click.option("--gpus-per-cell", type=float, default=None, help="Ray: GPUs per cell (0.5 shares a GPU). "
              "Default: 1 if the cluster has GPUs, else 0.")
@click.option("--cpus-per-cell", type=float, default=None, help="Ray: CPUs per cell. Default: 1.")
@click.option("--max-retries", type=int, default=3, show_default=True,
              help="Ray: retries of a cell whose worker died (pre-emption); it resumes from its checkpoint.")
@usage_errors
def run(config, results, data_dir, device, channels_last, compile_model, force, dry_run, speed_json, grad_steps_per_s,
        executor, ray_address, gpus_per_cell, cpus_per_cell, max_retries, **matrix_flags):
    """Train and evaluate every cell of datasets x models x methods x training attacks x seeds; finished cells
    are skipped, interrupted ones resume. Exit code 1 if a cell failed, 2 for bad input (nothing written).

    \b
    Example:
      bench run --methods at,irat,lrat --train-attack pgd,cw --epochs 10 --train-subset 4096 --test-subset 500
      bench run --config experiments/smoke.toml --dry-run
      bench run --config experiments/smoke.toml --seeds 0,1,2 --executor ray --gpus-per-cell 0.5
    """
    from bench import matrix

    given = _given(click.get_current_context())
    file_values = matrix.load_matrix_file(config) if config else {}
    cells = matrix.resolve(matrix.merge(matrix.defaults_of(run), file_values,
                                        {k: v for k, v in matrix_flags.items() if k in given}))
    if executor == "local" and {"ray_address", "gpus_per_cell", "cpus_per_cell", "max_retries"} & given:
        raise UsageError("--ray-address, --gpus-per-cell, --cpus-per-cell and --max-retries need --executor ray.")
    for name, value in (("gpus-per-cell", gpus_per_cell), ("cpus-per-cell", cpus_per_cell), ("max-retries", max_retries)):
        if value is not None and value < 0:
            raise UsageError(f"--{name} must be >= 0, got {value}.")
    if not dry_run:
        matrix.check_results_dir(results)
    if executor == "ray":
        from bench.executors import import_ray
        import_ray()
    from bench.provenance import resolve_device

    from bench.store import Store

    store = Store(results)
    if dry_run:  # reads no dataset: the sizes come from the datasets' definitions
        _print_plan(store, cells, grad_steps_per_s, matrix.load_speed_json(speed_json) if speed_json else None)
        return
    dev = resolve_device(device) if executor == "local" else None
    data = matrix.load_matrix_data(cells, data_dir)
    from bench.executors import LocalExecutor, RayExecutor
    from bench.train import RuntimeOptions

    runtime = RuntimeOptions(channels_last=channels_last, compile=compile_model)
    if executor == "ray":
        ex = RayExecutor(store, device, data_dir, ray_address, 1.0 if cpus_per_cell is None else cpus_per_cell,
                         gpus_per_cell, max_retries, runtime=runtime)
    else:
        ex = LocalExecutor(store, dev, data_dir, data, runtime=runtime)
    outcomes = ex.run(cells, force=force)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "busy")}
    click.echo(f"{len(cells)} cells: {counts['done']} run, {counts['skipped']} already finished, "
               f"{counts['failed']} failed, {counts['busy']} running elsewhere. Results in {results}/", err=True)
    for o in outcomes:
        if o.status == "failed":
            click.echo(f"  FAILED {o.cell.label}: {o.reason}", err=True)
    sys.exit(1 if counts["failed"] else 0)


def _print_plan(store, cells, grad_steps_per_s, speed) -> None:
    """`bench run --dry-run`: each cell's state, training work and hours left, then the totals."""
    from bench.matrix import cell_hours, cell_sizes, grad_steps
    from bench.status import cell_status, counts, format_table

    sizes = [cell_sizes(c) for c in cells]  # (training points, test points)
    rows = [cell_status(store, c.train.run_id, c, n_test) for c, (_, n_test) in zip(cells, sizes)]
    left = [s.state not in ("finished", "running") for s in rows]
    work = [grad_steps(c, n_train, s.epochs_done) if todo else 0
            for c, (n_train, _), s, todo in zip(cells, sizes, rows, left)]
    hrs = [cell_hours(c, n_train, s.epochs_done, speed, grad_steps_per_s) if todo else 0.0
           for c, (n_train, _), s, todo in zip(cells, sizes, rows, left)]
    extra = {"work": [f"{w:>14,} steps" for w in work]}
    if any(h is not None for h in hrs):
        extra["hours"] = [f"{h:>7.2f} h" for h in hrs]
    for line in format_table(rows, extra):
        click.echo(line)
    total = sum(work)
    click.echo(f"{len(cells)} cells: {counts(rows)}. Work left: {total:,} example-gradient steps "
               f"(epochs left x train size x (attack steps + 1)).")
    if speed is not None:
        st = speed.settings
        click.echo(f"Estimate: about {sum(hrs):.3g} GPU-hours of training for one worker, from {speed.device}: "
                   f"{st.get('model')} batch {st.get('batch_size')} {st.get('precision')}"
                   f"{' channels_last' if st.get('channels_last') else ''}{' compiled' if st.get('compile') else ''}"
                   f" (measured images/s per method and attack where the file has them, else its AT rate of "
                   f"{speed.grad_steps_per_s:,.0f} example-gradient steps/s). Evaluation is not counted.")
        differ = sorted({f"{k} {getattr(cells[0].train, k)}" for k in ("model", "batch_size", "precision")
                         if k in st and any(getattr(c.train, k) != st[k] for c in cells)})
        if differ:
            click.echo(f"  The cells differ from the measured settings ({', '.join(differ)}): expect a different "
                       f"time; `bench speed` with the cells' settings gives a closer figure.")
    elif grad_steps_per_s:
        click.echo(f"Estimate: about {sum(hrs):.3g} worker-hours at {grad_steps_per_s:g} steps/s.")
    else:
        click.echo("Give --speed-json (a `bench speed --json` file) or --grad-steps-per-s for hours.")


@main.command()
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results store directory.")
@click.option("--out", default=DEFAULT_REPORTS, show_default=True, help="Where tables, plots and the PDF go.")
@click.option("--dataset", "datasets", default="", help="Comma-separated datasets (default: all in the store).")
@click.option("--model", "models", default="", help="Comma-separated models (default: all in the store).")
@click.option("--methods", default="", help="Comma-separated methods (default: all in the store).")
@click.option("--train-attack", "train_attacks", default="",
              help="Comma-separated training attacks, e.g. pgd,cw,saa+cw (default: all in the store).")
@click.option("--checkpoint", default="best", show_default=True,
              help="best: highest validation PGD accuracy; last: the final epoch; epochN: after epoch N, if kept.")
@click.option("--baseline", default="at", show_default=True,
              help="Method the gaps are measured against: its run with the same training attack, else its PGD run.")
@click.option("--no-pdf", is_flag=True, help="Write report.tex but do not run pdflatex.")
@usage_errors
def report(results, out, datasets, models, methods, train_attacks, checkpoint, baseline, no_pdf):
    """Paper-ready tables (LaTeX, Markdown, CSV), the seen/related/unseen gap to a baseline with intervals and
    p-values, plots, a compiled PDF and summary.md, from the finished runs in the store (no torch needed).

    \b
    Example:
      bench report --results results --out reports
      bench report --dataset fashion-mnist --methods at,gairat,lrat --train-attack pgd,cw --checkpoint last
    """
    from bench.report import parse_selection, write_report
    from bench.report_document import ReportError

    selection = parse_selection(checkpoint=checkpoint, datasets=datasets, models=models, methods=methods,
                                train_attacks=train_attacks, baseline=baseline, compile_pdf=not no_pdf)
    try:
        written = write_report(results, out, selection)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    for name, path in written.items():
        click.echo(f"{name:>24}: {path}")


@main.command(name="ls")
def list_components():
    """List methods, training attacks, evaluation attacks, datasets and models, one line each.

    \b
    Example:
      bench ls
    """
    from bench.data import DATASETS
    from bench.eval_attacks import EVAL_ATTACKS
    from bench.models import MODEL_SUMMARIES
    from bench.train_attacks import TRAIN_ATTACKS
    from methods import METHODS

    sections = {
        "methods": {k: (v.summary if k == v.name else f"alias of {v.name}") for k, v in METHODS.items()},
        "training attacks": {k: v.summary for k, v in TRAIN_ATTACKS.items()},
        "evaluation attacks": {k: v.summary for k, v in EVAL_ATTACKS.items()},
        "datasets": {k: v.summary for k, v in DATASETS.items()},
        "models": MODEL_SUMMARIES,
    }
    for title, entries in sections.items():
        click.echo(f"{title}:")
        for name, summary in entries.items():
            click.echo(f"  {name:<16} {summary}")


from bench.cli_speed import speed  # noqa: E402  (commands in their own modules register here)

main.add_command(speed, name="speed")
from bench.status import status  # noqa: E402

main.add_command(status, name="status")
from bench.cli_eval import eval_command, export_command  # noqa: E402

main.add_command(eval_command, name="eval")
main.add_command(export_command, name="export")
