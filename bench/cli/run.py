"""`bench run`: parse the matrix (flags over a matrix file over the defaults) into cells and hand them to an
executor; `--dry-run` prints the plan instead. Torch is imported only once cells are to run."""
from __future__ import annotations

import sys

import click

from bench.cli.common import (RUN_DEFAULTS, data_dir_option, device_option, echo_json, eval_attacks_option,
                              eval_batch_size_option, eval_precision_option, given_params, json_option,
                              results_option, say, threat_model_option, usage_errors)
from bench.config.catalog import MODELS
from bench.config.names import UsageError

_LR_HELP = ", ".join(f"{name} {entry.lr:g}" for name, entry in MODELS.items())


@click.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A matrix file (TOML, see experiments/smoke.toml); flags you give override it.")
@click.option("--methods", default=RUN_DEFAULTS["methods"], show_default=True,
              help="Comma-separated methods (see `bench ls`).")
@click.option("--train-attack", "train_attack", default=RUN_DEFAULTS["train_attack"], show_default=True,
              help="Comma-separated training attacks, one cell each; '+' combines attacks in one LRAT run (saa+cw).")
@click.option("--method-param", "method_params", multiple=True, metavar="METHOD.NAME=VALUE",
              help="Override a method parameter, e.g. gairat.lam=0 (repeatable).")
@click.option("--dataset", default=RUN_DEFAULTS["dataset"], show_default=True,
              help="Comma-separated datasets, one cell each.")
@click.option("--model", default=RUN_DEFAULTS["model"],
              help="Comma-separated models, one cell each. Default: cnn-bn for 28x28 data, resnet18 for 32x32.")
@click.option("--epochs", type=int, default=RUN_DEFAULTS["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=RUN_DEFAULTS["batch_size"], show_default=True)
@click.option("--lr", type=float, default=RUN_DEFAULTS["lr"],
              help=f"SGD learning rate. Default: the model's ({_LR_HELP}).")
@click.option("--lr-scale", type=click.Choice(["none", "linear"]), default=RUN_DEFAULTS["lr_scale"], show_default=True,
              help="linear: lr x batch-size / 128, to scale batch size and learning rate together.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=RUN_DEFAULTS["precision"], show_default=True,
              help="Training (and training-attack) precision; bf16 autocast, never fp16. Part of the run id.")
@click.option("--weight-decay", type=float, default=RUN_DEFAULTS["weight_decay"], show_default=True)
@click.option("--eps", default=RUN_DEFAULTS["eps"], help="L-inf training budget in pixel units: 8/255 or 0.0314. "
              "Default: 0.1 for (fashion-)mnist, 8/255 otherwise.")
@click.option("--attack-steps", type=int, default=RUN_DEFAULTS["attack_steps"], show_default=True,
              help="K of the pgd/cw/kl training attacks.")
@click.option("--saa-steps", type=int, default=RUN_DEFAULTS["saa_steps"], show_default=True,
              help="APGD steps per target (3 targets) of the saa training attack.")
@click.option("--step-size", default=RUN_DEFAULTS["step_size"], help="Training attack step; default eps/4.")
@click.option("--seeds", default=RUN_DEFAULTS["seeds"], show_default=True, help="Comma-separated seeds, one cell each.")
@eval_attacks_option()
@threat_model_option(help="Threat model of the evaluation attacks.")
@click.option("--eval-eps", default=RUN_DEFAULTS["eval_eps"],
              help="Evaluation budget. Default: the training eps (linf).")
@click.option("--train-subset", type=int, default=RUN_DEFAULTS["train_subset"],
              help="Class-balanced training subset size.")
@click.option("--val-size", type=int, default=RUN_DEFAULTS["val_size"], show_default=True,
              help="Validation split carved from training.")
@click.option("--test-subset", type=int, default=RUN_DEFAULTS["test_subset"],
              help="Test points to evaluate (class-balanced; first N on CIFAR); more than the test set is refused.")
@eval_batch_size_option(
    help="Evaluation batch (AutoAttack's too): as large as fits; recorded, its random starts depend on it.")
@eval_precision_option(
    help="Reported numbers in fp32 with TF32 off; tf32 is faster on GPUs (its own eval group, recorded).")
@click.option("--checkpoints", default=RUN_DEFAULTS["checkpoints"], show_default=True,
              help="Checkpoints to evaluate: best (on the validation split), last, epochN (kept while training, "
                   "e.g. epoch60); `bench eval` adds best/last later.")
@results_option
@data_dir_option
@device_option
@click.option("--channels-last", is_flag=True, help="NHWC memory layout (GPU speed; not part of the run id).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (GPU speed; slower on CPUs).")
@click.option("--force", is_flag=True, help="Redo cells that are already finished.")
@click.option("--dry-run", is_flag=True, help="Print the cells, their state and the work left; run nothing.")
@json_option("--dry-run's cells, work left and totals")
@click.option("--speed-json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--dry-run: turn the work into hours with a `bench speed --json` file's figures.")
@click.option("--grad-steps-per-s", type=float, default=None, help="Measured throughput of one worker in "
              "example-gradient steps/s (PGD-10 AT at R images/s = 11 R): --dry-run then estimates hours.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells here (--workers at a time); ray: each cell a Ray task (pip install 'lrat-bench[ray]').")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="local: cells run at once, each in its own process with an equal share of the CPU threads.")
@click.option("--ray-address", default=None, help="Ray cluster to join (e.g. auto); default: a local instance.")
@click.option("--gpus-per-cell", type=float, default=None, help="Ray: GPUs per cell (0.5 shares a GPU). "
              "Default: 1 if the cluster has GPUs, else 0.")
@click.option("--cpus-per-cell", type=float, default=None, help="Ray: CPUs per cell. Default: 1.")
@click.option("--max-retries", type=int, default=3, show_default=True,
              help="Ray: retries of a cell whose worker died (pre-emption); it resumes from its checkpoint.")
@usage_errors
def run(config, results, data_dir, device, channels_last, compile_model, force, dry_run, as_json, speed_json,
        grad_steps_per_s, executor, workers, ray_address, gpus_per_cell, cpus_per_cell, max_retries, **matrix_flags):
    """Train and evaluate every cell of datasets x models x methods x training attacks x seeds; finished cells
    are skipped, interrupted ones resume. Exit code 1 if a cell failed, 2 for bad input (nothing written), 130
    if interrupted (Ctrl-C: run it again to resume).

    \b
    Example:
      bench run --methods at,irat,lrat --train-attack pgd,cw --epochs 10 --train-subset 4096 --test-subset 500
      bench run --config experiments/smoke.toml --dry-run
      bench run --config experiments/smoke.toml --dry-run --json > plan.json
      bench run --config experiments/smoke.toml --seeds 0,1,2 --executor ray --gpus-per-cell 0.5
    """
    from bench.config.matrix_cells import resolve
    from bench.config.matrix_estimate import load_speed_json
    from bench.config.matrix_file import load_matrix_file
    from bench.config.matrix_merge import merge
    from bench.store import Store

    given = given_params(click.get_current_context())
    if as_json and not dry_run:
        raise UsageError("--json prints --dry-run's plan; add --dry-run (a run reports on stderr, then `bench status "
                         "--json`).")
    file_values = load_matrix_file(config) if config else {}
    cells = resolve(merge(RUN_DEFAULTS, file_values, {k: v for k, v in matrix_flags.items() if k in given}))
    _check_executor_flags(executor, given, {"gpus-per-cell": gpus_per_cell, "cpus-per-cell": cpus_per_cell,
                                            "max-retries": max_retries})
    if dry_run:  # reads no dataset and writes nothing: the sizes come from the datasets' definitions
        _print_plan(Store(results), cells, grad_steps_per_s, load_speed_json(speed_json) if speed_json else None,
                    as_json)
        return
    executor_options = {"kind": executor, "workers": workers, "ray_address": ray_address,
                        "gpus_per_cell": gpus_per_cell, "cpus_per_cell": cpus_per_cell, "max_retries": max_retries,
                        "channels_last": channels_last, "compile": compile_model}
    sys.exit(_execute(cells, results, data_dir, device, force, executor_options))


def _check_executor_flags(executor: str, given: set[str], ray_numbers: dict[str, float | None]) -> None:
    """Refuse flags of the other executor, and negative Ray resources, before anything is written."""
    if executor == "local" and {"ray_address", "gpus_per_cell", "cpus_per_cell", "max_retries"} & given:
        raise UsageError("--ray-address, --gpus-per-cell, --cpus-per-cell and --max-retries need --executor ray.")
    if executor == "ray" and "workers" in given:
        raise UsageError("--workers is for --executor local; Ray sizes its workers with --cpus-per-cell.")
    for name, value in ray_numbers.items():
        if value is not None and value < 0:
            raise UsageError(f"--{name} must be >= 0, got {value}.")


def _execute(cells, results: str, data_dir, device: str, force: bool, options: dict) -> int:
    """Run the cells on the chosen executor; the exit code: 1 when a cell failed, else 0. Torch from here on."""
    from bench.config.preflight import check_results_dir

    check_results_dir(results)
    if options["kind"] == "ray":
        from bench.execution.executors import import_ray
        import_ray()
    from bench.execution.executors import LocalExecutor, RayExecutor
    from bench.execution.matrix_data import load_matrix_data
    from bench.provenance import resolve_device
    from bench.store import Store
    from bench.training.loop import RuntimeOptions

    store = Store(results)
    dev = resolve_device(device) if options["kind"] == "local" else None  # Ray resolves it on each worker
    data = load_matrix_data(cells, data_dir)  # either executor: a missing dataset is refused before any cell
    runtime = RuntimeOptions(channels_last=options["channels_last"], compile=options["compile"])
    if options["kind"] == "ray":
        cpus = 1.0 if options["cpus_per_cell"] is None else options["cpus_per_cell"]
        ex = RayExecutor(store, device, data_dir, options["ray_address"], cpus, options["gpus_per_cell"],
                         options["max_retries"], runtime=runtime)
    else:
        ex = LocalExecutor(store, dev, data_dir, data, workers=options["workers"], runtime=runtime)
    outcomes = ex.run(cells, force=force)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "busy")}
    say(f"{len(cells)} cells: {counts['done']} run, {counts['skipped']} already finished, "
        f"{counts['failed']} failed, {counts['busy']} running elsewhere. Results in {results}/", err=True)
    for o in outcomes:
        if o.status == "failed":
            click.echo(f"  FAILED {o.cell.label}: {o.reason}", err=True)
    _warn_other_code(store, [o.cell for o in outcomes if o.status == "skipped"])
    return 1 if counts["failed"] else 0


def _warn_other_code(store, reused) -> None:
    """A line on stderr for each finished cell reused (not retrained) whose weights were trained by other code
    than this checkout's (bench/fingerprint.py); runs without a recorded fingerprint are not judged."""
    from bench.fingerprint import code_fingerprint, recorded_fingerprint
    from bench.store import StoreError

    current = code_fingerprint()
    for cell in reused:
        try:
            stored = recorded_fingerprint(store.config(cell.train.run_id))
        except StoreError:
            continue
        if stored is not None and stored != current:
            click.echo(f"  warning: {cell.label} reused as finished, but trained by code fingerprint {stored}; "
                       f"this code is {current} (--force retrains it)", err=True)


def _plan(store, cells, grad_steps_per_s, speed) -> tuple[list, dict]:
    """`bench run --dry-run`'s figures: each cell's status, and the JSON document (docs/cli.md) that both the
    text and --json print: per cell its state, training work left (example-gradient steps) and hours (None
    without a throughput figure); the totals; the estimate's basis."""
    from bench.config.matrix_estimate import cell_hours, cell_sizes, grad_steps
    from bench.execution.status import cell_status, totals

    sizes = [cell_sizes(c) for c in cells]  # (training points, test points)
    rows = [cell_status(store, c.train.run_id, c, n_test) for c, (_, n_test) in zip(cells, sizes)]
    left = [s.state not in ("finished", "running") for s in rows]
    work = [grad_steps(c, n_train, s.epochs_done) if todo else 0
            for c, (n_train, _), s, todo in zip(cells, sizes, rows, left)]
    timed = speed is not None or bool(grad_steps_per_s)  # hours only from a measured throughput
    hrs = [cell_hours(c, n_train, s.epochs_done, speed, grad_steps_per_s) if todo and timed else 0.0
           for c, (n_train, _), s, todo in zip(cells, sizes, rows, left)]
    estimate = None
    if speed is not None:
        st = speed.settings
        estimate = {"basis": "speed-json", "hours": sum(hrs), "device": speed.device,
                    "settings": {k: st.get(k) for k in ("model", "batch_size", "precision", "channels_last", "compile")},
                    "grad_steps_per_s": speed.grad_steps_per_s,
                    "differs": sorted({f"{k} {getattr(cells[0].train, k)}" for k in ("model", "batch_size", "precision")
                                       if k in st and any(getattr(c.train, k) != st[k] for c in cells)})}
    elif grad_steps_per_s:
        estimate = {"basis": "grad-steps-per-s", "hours": sum(hrs), "grad_steps_per_s": grad_steps_per_s}
    document = {
        "results": str(store.root), "results_exists": store.root.exists(),
        "cells": [{**s.to_dict(), "work_steps": w, "hours": h if timed else None}
                  for s, w, h in zip(rows, work, hrs)],
        "totals": {**totals(rows), "work_steps": sum(work), "hours": sum(hrs) if timed else None},
        "estimate": estimate,
    }
    return rows, document


def _plan_lines(rows, plan: list[dict], timed: bool) -> list[str]:
    """One line per cell in aligned columns: state, label, work left, hours left (with a throughput figure;
    blank for a cell with nothing left here, finished or running elsewhere), then the detail."""
    width = max((len(s.label) for s in rows), default=0)
    lines = []
    for s, c in zip(rows, plan):
        cols = [f"{s.state:<9}", f"{s.label:<{width}}", f"{c['work_steps']:>14,} steps"]
        if timed:
            cols.append(f"{c['hours']:>8.3g} h" if s.state not in ("finished", "running") else " " * 10)
        lines.append(("  ".join(cols) + (f"  {s.detail}" if s.detail else "")).rstrip())
    return lines


def _print_plan(store, cells, grad_steps_per_s, speed, as_json: bool = False) -> None:
    """`bench run --dry-run`: each cell's state, training work and hours left, then the totals (text or JSON)."""
    from bench.execution.status import counts

    rows, doc = _plan(store, cells, grad_steps_per_s, speed)
    if as_json:
        echo_json(doc)
        return
    total, estimate = doc["totals"], doc["estimate"]
    for line in _plan_lines(rows, doc["cells"], total["hours"] is not None):
        click.echo(line)
    click.echo(f"{total['cells']} cells: {counts(rows)}. Work left: {total['work_steps']:,} example-gradient steps "
               f"(epochs left x train size x (attack steps + 1)).")
    if estimate is not None and estimate["basis"] == "speed-json":
        st = estimate["settings"]
        unit = "CPU hours" if str(estimate["device"]).startswith("cpu") else "GPU-hours"
        click.echo(f"Estimate: about {estimate['hours']:.3g} {unit} of training for one worker, from "
                   f"{estimate['device']}: {st.get('model')} batch {st.get('batch_size')} {st.get('precision')}"
                   f"{' channels_last' if st.get('channels_last') else ''}{' compiled' if st.get('compile') else ''}"
                   f" (measured images/s per method and attack where the file has them, else its AT rate of "
                   f"{estimate['grad_steps_per_s']:,.0f} example-gradient steps/s). Evaluation is not counted.")
        if estimate["differs"]:
            click.echo(f"  The cells differ from the measured settings ({', '.join(estimate['differs'])}): expect a "
                       f"different time; `bench speed` with the cells' settings gives a closer figure.")
    elif estimate is not None:
        click.echo(f"Estimate: about {estimate['hours']:.3g} worker-hours at {estimate['grad_steps_per_s']:g} steps/s.")
    else:
        click.echo("Give --speed-json (a `bench speed --json` file) or --grad-steps-per-s for hours.")
