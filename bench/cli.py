"""The `bench` command: thin glue that parses names into typed configs (the only place strings are parsed)
and hands them to the library. Heavy imports (torch) happen inside the commands that need them, so
`bench report` and `bench --help` stay fast."""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

from bench.names import UsageError, split_list

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


def _check_writable(path: str) -> None:
    p = Path(path)
    probe = p if p.exists() else next((q for q in p.parents if q.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise UsageError(f"Results directory '{path}' is not writable.")


def _parse_methods(names: str, params: tuple[str, ...]):
    """['gairat.lam=0', ...] -> [(canonical name, full params dict), ...] in the order given."""
    import dataclasses

    from methods import METHODS, canonical_method

    overrides: dict[str, dict[str, str]] = {}
    for item in params:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--method-param takes METHOD.NAME=VALUE (e.g. gairat.lam=0), got '{item}'.")
        overrides.setdefault(canonical_method(method), {})[param.strip()] = value.strip()
    chosen = [canonical_method(m) for m in split_list(names)]
    if not chosen:
        raise UsageError("--methods is empty.")
    for m in overrides:
        if m not in chosen:
            raise UsageError(f"--method-param names method '{m}', which is not in --methods.")
    out = []
    for m in dict.fromkeys(chosen):
        method = METHODS[m].make(overrides.get(m))
        out.append((m, dataclasses.asdict(method.params)))
    return out


@main.command()
@click.option("--methods", default="at", show_default=True, help="Comma-separated methods (see `bench ls`).")
@click.option("--train-attack", "train_attack", default="pgd", show_default=True,
              help="Comma-separated training attacks, one cell each; '+' combines attacks in one LRAT run (saa+cw).")
@click.option("--method-param", "method_params", multiple=True, metavar="METHOD.NAME=VALUE",
              help="Override a method parameter, e.g. gairat.lam=0 (repeatable).")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--model", default=None, help="Default: small-cnn for 28x28 data, resnet18 for 32x32.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--weight-decay", type=float, default=2e-4, show_default=True)
@click.option("--eps", default=None, help="L-inf budget in pixel units: 8/255 or 0.0314. Default: 0.1 for "
              "(fashion-)mnist, 8/255 otherwise.")
@click.option("--attack-steps", type=int, default=10, show_default=True, help="K of the pgd/cw training attacks.")
@click.option("--step-size", default=None, help="Training attack step; default eps/4.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, one cell each.")
@click.option("--eval-attacks", default="natural,pgd20,cw20,aa", show_default=True)
@click.option("--train-subset", type=int, default=None, help="Class-balanced training subset size.")
@click.option("--val-size", type=int, default=512, show_default=True, help="Validation split carved from training.")
@click.option("--test-subset", type=int, default=None, help="Test points to evaluate (class-balanced; first N on CIFAR).")
@click.option("--eval-batch-size", type=int, default=256, show_default=True)
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results store directory.")
@click.option("--data-dir", default=None, help="Where datasets live (also $BENCH_DATA_DIR).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Redo cells that are already finished.")
@usage_errors
def run(methods, train_attack, method_params, dataset, model, epochs, batch_size, lr, weight_decay, eps,
        attack_steps, step_size, seeds, eval_attacks, train_subset, val_size, test_subset, eval_batch_size,
        results, data_dir, device, force):
    """Train and evaluate every cell of methods x training attacks x seeds; finished cells are skipped.

    \b
    Example:
      bench run --methods at,irat,lrat --train-attack pgd,cw --epochs 10 --train-subset 4096 --test-subset 500
    """
    from bench.config import EvalConfig, TrainConfig, parse_eps
    from bench.data import DATASETS
    from bench.eval_attacks import EVAL_ATTACKS
    from bench.models import MODELS
    from bench.names import lookup
    from bench.train_attacks import TRAIN_ATTACKS, parse_train_attack

    info = lookup("dataset", dataset, DATASETS)
    model = model or ("small-cnn" if info.image_size == 28 else "resnet18")
    lookup("model", model, MODELS)
    eps_value = parse_eps(eps) if eps is not None else (0.1 if info.image_size == 28 else 8 / 255)
    step = parse_eps(step_size) if step_size is not None else eps_value / 4
    method_list = _parse_methods(methods, method_params)
    attacks = [parse_train_attack(a) for a in split_list(train_attack)]
    from methods import METHODS
    for m, _ in method_list:
        for a in attacks:
            METHODS[m].make().check_attacks(tuple(a.split("+")), {k: v.has_kappa for k, v in TRAIN_ATTACKS.items()})
    suite = tuple(lookup("eval attack", a, EVAL_ATTACKS) and a.strip().lower() for a in split_list(eval_attacks))
    try:
        seed_list = [int(s) for s in split_list(seeds)]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got '{seeds}'.") from None
    for name, value in (("epochs", epochs), ("batch-size", batch_size), ("val-size", val_size)):
        if value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}.")
    _check_writable(results)

    base = TrainConfig(method="at", train_attack="pgd", dataset=info.name, model=model, eps=eps_value,
                       attack_steps=attack_steps, attack_step_size=step, train_subset=train_subset,
                       val_size=val_size, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       augment=info.augment)
    ecfg = EvalConfig(attacks=suite, test_subset=test_subset, batch_size=eval_batch_size)

    from bench.data import load_data
    from bench.provenance import resolve_device
    from bench.runner import Runner, expand
    from bench.store import Store

    dev = resolve_device(device)
    load_data(info.name, val_size=val_size, train_subset=train_subset, test_subset=test_subset, data_dir=data_dir)
    cells = expand(base, method_list, attacks, seed_list, ecfg)
    outcomes = Runner(Store(results), dev, data_dir).run(cells, force=force)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "busy")}
    click.echo(f"{len(cells)} cells: {counts['done']} run, {counts['skipped']} already finished, "
               f"{counts['failed']} failed, {counts['busy']} running elsewhere. Results in {results}/", err=True)
    for o in outcomes:
        if o.status == "failed":
            click.echo(f"  FAILED {o.cell.label}: {o.reason}", err=True)
    sys.exit(1 if counts["failed"] else 0)


@main.command()
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results store directory.")
@click.option("--out", default=DEFAULT_REPORTS, show_default=True, help="Where tables, plots and the PDF go.")
@click.option("--dataset", "datasets", default="", help="Comma-separated datasets (default: all in the store).")
@click.option("--model", "models", default="", help="Comma-separated models (default: all in the store).")
@click.option("--methods", default="", help="Comma-separated methods (default: all in the store).")
@click.option("--train-attack", "train_attacks", default="",
              help="Comma-separated training attacks, e.g. pgd,cw,saa+cw (default: all in the store).")
@click.option("--checkpoint", default="best", show_default=True, type=click.Choice(["best", "last"]),
              help="best: highest validation PGD accuracy; last: the final epoch.")
@click.option("--baseline", default="at", show_default=True,
              help="Method the gaps are measured against: its run with the same training attack, else its PGD run.")
@click.option("--no-pdf", is_flag=True, help="Write report.tex but do not run pdflatex.")
@usage_errors
def report(results, out, datasets, models, methods, train_attacks, checkpoint, baseline, no_pdf):
    """Paper-ready tables (LaTeX, Markdown, CSV), the seen/unseen gap to a baseline with intervals and McNemar
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
