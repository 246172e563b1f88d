"""`bench eval`: evaluate stored runs with more attacks or another eps, no retraining; or, with --model-file,
a model from outside the store (bench.api.evaluate). Thin glue over bench.evaluation.evaluate and bench.api
(imported, with torch, only once the arguments are checked)."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from collections import Counter

import click

from bench.cli.common import (data_dir_option, device_option, eval_attacks_option, eval_batch_size_option,
                              eval_precision_option, given_params, results_option, say, threat_model_option,
                              usage_errors)
from bench.config.catalog import DEFAULTS, EXTERNAL, is_external
from bench.config.names import UsageError, split_list


def _stored_size(store, run_id: str) -> int | None:
    """The test-set size of a run's stored evaluations (most common; the largest on a tie), so that new
    attacks land on the same points as the old ones and join their worst row."""
    evals = store.run_dir(run_id) / "evals"
    sizes = [int(m.group(1)) for p in (evals.iterdir() if evals.exists() else [])
             if (m := re.search(r"-n(\d+)$", p.name))]
    if not sizes:
        return None
    counts = Counter(sizes)
    return max(counts, key=lambda n: (counts[n], n))


def _resolve_runs(store, run_ids: tuple[str, ...], ckpts: tuple[str, ...] = ("best",)) -> list[str]:
    """The runs to evaluate. A named run whose training is not finished (no TRAINED marker) is refused: its
    best/last files are not its final models, so rows stored from them would outlive them; only epochN
    checkpoints it already kept can be evaluated."""
    from bench.config import checkpoint_epoch_number
    from bench.store import TRAINED, resolve_run_id

    if not run_ids:
        found = store.finished_runs()
        if not found:
            raise UsageError(f"No finished runs in {store.root}: run `bench run` first, or name runs.")
        return found
    out = []
    for text in run_ids:
        run_id = resolve_run_id(store, text)
        if (name := _external_name(store, run_id)) is not None:
            raise UsageError(f"Run {run_id} is an external model ('{name}'): bench eval cannot rebuild it from the "
                             f"store. Evaluate its module again: bench eval --model-file PATH.py:FACTORY --name {name} "
                             f"--dataset ..., or bench.api.evaluate.")
        if not store.has(run_id, TRAINED):
            run_dir = store.run_dir(run_id)
            kept = sorted((p.stem for p in run_dir.glob("epoch*.pt") if p.stem[5:].isdigit()),
                          key=lambda c: int(c[5:]))
            final = [c for c in ckpts if checkpoint_epoch_number(c) is None]
            missing = [c for c in ckpts if checkpoint_epoch_number(c) is not None and c not in kept]
            if final or missing:
                why = (f"its {'/'.join(final)} checkpoint is not its final model yet" if final
                       else f"it has no {', '.join(missing)} checkpoint")
                hint = f" It kept: {', '.join(kept)} (--checkpoint {kept[-1]})." if kept else ""
                raise UsageError(f"Run {run_id} has not finished training (no TRAINED marker): {why}. Finish it "
                                 f"with `bench run` first.{hint}")
        out.append(run_id)
    return list(dict.fromkeys(out))


def _external_name(store, run_id: str) -> str | None:
    """The name of an external model's run (bench.api.evaluate); None for a trained run or an unreadable config
    (reported as damaged later)."""
    from bench.store import StoreError

    try:
        train = store.config(run_id)["train"]
    except StoreError:
        return None
    return train.get("method") if is_external(train) else None


@click.command(name="eval")
@click.argument("run_ids", nargs=-1)
@results_option
@eval_attacks_option(help="Comma-separated eval attacks (see `bench ls`).")
@click.option("--eps", default=None, help="Comma-separated budgets in pixel units (8/255, 0.5). Default: the "
              "training eps for linf, 0.5 (CIFAR/SVHN) or 1.5 ((fashion-)MNIST) for l2.")
@threat_model_option()
@click.option("--test-subset", type=int, default=None, help="Test points (first N on CIFAR, class-balanced "
              "otherwise; more than the test set is refused). Default: as in the run's stored evaluations, else the "
              "whole test set.")
@click.option("--checkpoint", default=",".join(DEFAULTS.checkpoints), show_default=True,
              help="Comma-separated: best, last, epochN (an epoch checkpoint kept when the run trained).")
@eval_batch_size_option()
@eval_precision_option(help="fp32 with TF32 off (reported numbers), or tf32 (faster on GPUs; its own eval group).")
@click.option("--seed", type=int, default=0, show_default=True, help="Eval seed (random starts, AutoAttack).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Runs evaluated at once, each in its own process with an equal share of the CPU threads.")
@click.option("--model-file", metavar="PATH.py:FACTORY", default=None,
              help="Evaluate a model from outside the store: FACTORY() in PATH.py returns an nn.Module taking inputs "
                   "in [0, 1] and returning logits. Needs --name and --dataset; --eps defaults to the dataset's "
                   "usual budget, --checkpoint to the label 'external'. Stored as a run of its own, shown by "
                   "`bench report` beside the trained runs.")
@click.option("--weights", default=None, metavar="FILE",
              help="--model-file: a state dict (torch.save(model.state_dict(), FILE)) loaded into the model, "
                   "weights-only.")
@click.option("--robustbench", "zoo_name", default=None, metavar="NAME",
              help="Evaluate RobustBench's zoo model NAME (e.g. Wong2020Fast) from its checkpoint in --model-dir, "
                   "through robustbench.utils.load_model, never downloading it (a missing file is refused, naming "
                   "the path). Needs --model-dir and --dataset (cifar10, cifar100); --threat-model picks the zoo's "
                   "Linf or L2 entry; stored like --model-file, under --name (default: NAME in lowercase).")
@click.option("--model-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="--robustbench: RobustBench's model folder, holding DATASET/Linf/NAME.pt (or L2).")
@click.option("--name", default=None, help="--model-file, --robustbench: the model's name in the store and the "
                                           "report (lowercase letters, digits, '.', '_', '-').")
@click.option("--dataset", default=None, help="--model-file, --robustbench: the dataset whose test points it is "
                                              "evaluated on.")
@data_dir_option
@device_option
@usage_errors
def eval_command(run_ids, results, eval_attacks, eps, threat_model, test_subset, checkpoint, eval_batch_size,
                 eval_precision, seed, workers, model_file, weights, zoo_name, model_dir, name, dataset, data_dir,
                 device):
    """Evaluate stored runs (the named ones, or every finished run) without retraining: new rows join the
    store, stored ones are reused, the per-example worst row and the guards are recomputed. An interrupted
    AutoAttack resumes from its state file. Rows record their checkpoint file's SHA-256 and are reused only on
    that file. Exit code 1 if a guard refused a run, another process held it, or one of its stored files is
    damaged (the other runs go on; the damaged ones are named at the end); 2 for bad input, a named run whose
    training is not finished among it (nothing evaluated).

    \b
    Example:
      bench eval --results results --eval-attacks fgsm,apgd-ce,apgd-t,fab-t,square
      bench eval 3f2a9c1b --eval-attacks natural,aa --threat-model l2 --eps 1.5
      bench eval --model-file mynet.py:build --weights mynet.pt --name mynet --dataset cifar10 --eval-attacks natural,aa
      bench eval --robustbench Wong2020Fast --model-dir models --dataset cifar10 --threat-model Linf
    """
    from bench.config.preflight import check_writable_dir
    from bench.store import Store

    given = given_params(click.get_current_context())
    settings = {"eval_attacks": eval_attacks, "threat_model": threat_model, "test_subset": test_subset,
                "eval_batch_size": eval_batch_size, "eval_precision": eval_precision, "seed": seed}
    if model_file is not None or zoo_name is not None:
        source = {"model_file": model_file, "weights": weights, "zoo_name": zoo_name, "model_dir": model_dir}
        _evaluate_external(run_ids, given, source, name, dataset, eps, checkpoint, settings, results, data_dir,
                           device)
        return
    for flag in ("weights", "model_dir", "name", "dataset"):
        if flag in given:
            raise UsageError(f"--{flag.replace('_', '-')} goes with --model-file or --robustbench (a model from "
                             f"outside the store); stored runs know their dataset and name.")
    suite, ckpts, budgets = _checked_settings(eval_attacks, checkpoint, eps, threat_model, test_subset,
                                              eval_batch_size, seed)
    if not Path(results, "runs").is_dir():
        raise UsageError(f"No results store at {results} (no {results}/runs).")
    check_writable_dir(results, "Results directory")  # rows, AutoAttack states and locks are written there
    store = Store(results)
    runs = _resolve_runs(store, run_ids, ckpts)
    jobs, damaged = _jobs(store, runs, suite, ckpts, budgets, settings)
    _evaluate(store, jobs, data_dir, device, damaged, workers)


def _checked_settings(eval_attacks, checkpoint, eps, threat_model, test_subset, eval_batch_size, seed):
    """(attacks, checkpoints, budgets) of an evaluation of stored runs, every flag checked (UsageError)."""
    from bench.config import parse_checkpoint, parse_eps
    from bench.config.limits import MAX_SEED
    from bench.config.names import lookup
    from bench.evaluation.attacks import EVAL_ATTACKS

    suite = tuple(dict.fromkeys(lookup("eval attack", a, EVAL_ATTACKS) and a.strip().lower()
                                for a in split_list(eval_attacks)))
    if not suite:
        raise UsageError("--eval-attacks is empty.")
    ckpts = tuple(dict.fromkeys(parse_checkpoint(c) for c in split_list(checkpoint)))
    budgets = [parse_eps(e, threat_model) for e in split_list(eps)] if eps is not None else [None]
    for flag, value in (("test-subset", test_subset), ("eval-batch-size", eval_batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be >= 1, got {value}.")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must lie in [0, 2^32 - 1 = {MAX_SEED}], got {seed}.")
    return suite, ckpts, budgets


def _jobs(store, runs: list[str], suite, ckpts, budgets, settings: dict) -> tuple[list, list[tuple[str, str]]]:
    """(jobs, damaged): one (run_id, config, EvalConfig) per run and budget, all checked before any work; the
    runs whose config is damaged, (run_id, why), reported at the end (exit 1) while the others go on."""
    from bench.config import EvalConfig
    from bench.data import DATASETS
    from bench.evaluation.guards import check_eps
    from bench.store import StoreError

    jobs, damaged = [], []
    threat_model, test_subset = settings["threat_model"], settings["test_subset"]
    for run_id in runs:
        try:
            config = store.config(run_id)
        except StoreError as exc:
            click.echo(f"  DAMAGED run {run_id}: {exc}", err=True)
            damaged.append((run_id, str(exc)))
            continue
        if is_external(config["train"]):  # only unnamed runs get here: a named one was refused
            click.echo(f"  skipped {run_id}: external model '{config['train']['method']}' (evaluate its module with "
                       f"--model-file, --robustbench or bench.api.evaluate)", err=True)
            continue
        info = DATASETS[config["train"]["dataset"]]
        if test_subset is not None and test_subset > info.n_test:  # as `bench run`: refused, not cut silently
            raise UsageError(f"--test-subset must be at most the size of {info.name}'s test set ({info.n_test:,} "
                             f"points), got {test_subset:,}; leave it out to evaluate on all of it.")
        n = test_subset if test_subset is not None else _stored_size(store, run_id)
        for b in budgets:
            if b is not None:
                try:
                    check_eps(b, threat_model, info.in_channels * info.image_size ** 2)
                except UsageError as exc:
                    raise UsageError(f"--eps on {info.name} ({info.in_channels} x {info.image_size} x "
                                     f"{info.image_size} inputs): {exc}") from None
            jobs.append((run_id, config, EvalConfig(attacks=suite, eps=b, threat_model=threat_model, test_subset=n,
                                                    batch_size=settings["eval_batch_size"], seed=settings["seed"],
                                                    checkpoints=ckpts, precision=settings["eval_precision"])))
    return jobs, damaged


def _external_args(run_ids, given, source: dict, name: str | None, dataset: str | None) -> str:
    """Refuse flags that do not go with --model-file / --robustbench; the model's name in the store."""
    flag = "--model-file" if source["model_file"] is not None else "--robustbench"
    if source["model_file"] is not None and source["zoo_name"] is not None:
        raise UsageError("--model-file and --robustbench each name the model to evaluate: give one of them.")
    if run_ids:
        raise UsageError(f"{flag} evaluates one model from outside the store: leave out the run ids "
                         f"({' '.join(run_ids)}).")
    if "workers" in given:
        raise UsageError(f"--workers is for stored runs; {flag} evaluates one model.")
    wrong = ("model_dir" if flag == "--model-file" else "weights")
    if wrong in given:
        raise UsageError(f"--{wrong.replace('_', '-')} does not go with {flag} (--weights: --model-file's state "
                         f"dict; --model-dir: --robustbench's checkpoint folder).")
    name = name if name is not None or source["zoo_name"] is None else source["zoo_name"].lower()
    needs = [("name", name), ("dataset", dataset)] + ([("model-dir", source["model_dir"])]
                                                     if flag == "--robustbench" else [])
    missing = [f"--{f}" for f, v in needs if v is None]
    if missing:
        raise UsageError(f"{flag} needs {' and '.join(missing)} (the model's name in the store; the dataset it is "
                         f"evaluated on; RobustBench's model folder).")
    return name


def _evaluate_external(run_ids, given, source: dict, name, dataset, eps, checkpoint, settings: dict, results,
                       data_dir, device) -> None:
    """`bench eval --model-file` (the module FACTORY() builds, --weights loaded) or `--robustbench` (the zoo
    model from its local checkpoint), through bench.api.evaluate once per budget. Every argument is checked
    before the model is loaded; nothing is written on bad input."""
    from bench import api
    from bench.config import parse_eps
    from bench.evaluation import external
    from bench.evaluation.guards import GuardFailure

    name = _external_args(run_ids, given, source, name, dataset)
    label = checkpoint if "checkpoint" in given else EXTERNAL
    budgets = [parse_eps(e, settings["threat_model"]) for e in split_list(eps)] if eps is not None else [None]
    common = {"name": name, "dataset": dataset, "checkpoint": label, **settings}
    for b in budgets:
        external.check_evaluation(eps=b, **common)
    if source["model_file"] is not None:
        model = external.load_model_file(source["model_file"], source["weights"])
        origin = f"bench eval --model-file {source['model_file']}" + (
            f" --weights {source['weights']}" if source["weights"] else "")
    else:
        from bench.evaluation.robustbench_zoo import zoo_threat_model

        model = api.robustbench_model(source["zoo_name"], source["model_dir"], dataset, settings["threat_model"])
        origin = (f"robustbench.utils.load_model('{source['zoo_name']}', model_dir='{source['model_dir']}', "
                  f"dataset='{dataset}', threat_model='{zoo_threat_model(settings['threat_model'])}')")
    rows = []
    try:
        for b in budgets:
            frame = api.evaluate(model, eps=b, results=results, device=device, data_dir=data_dir, source=origin,
                                 **common)
            rows += frame.drop(columns="flags").to_dict("records")
    except (GuardFailure, RuntimeError) as exc:
        raise click.ClickException(f"{name}: {exc}") from None
    _print_summary(rows)


def _evaluate_job(results: str, run_id: str, config: dict, ecfg, data_dir, device: str,
                  index: str) -> tuple[str, object]:
    """One run's evaluation, in this process or a worker's: ("done", rows), or ("refused" | "busy" |
    "damaged", reason). Guards, locks and damaged files stay this run's business; the others go on."""
    from filelock import FileLock, Timeout

    from bench.data import load_keyed
    from bench.evaluation.evaluate import evaluate_run, resolve_eval_eps
    from bench.evaluation.guards import GuardFailure
    from bench.provenance import resolve_device
    from bench.store import DONE, Store, StoreError, read_json

    store, t = Store(results), config["train"]
    label = f"{t['method']}/{t['train_attack']} seed {t['seed']} [{run_id}]"
    test = load_keyed((t["dataset"], t["val_size"], t["train_subset"], ecfg.test_subset), data_dir, _BUNDLES).test
    eps = resolve_eval_eps(t["dataset"], t["eps"], ecfg)
    say(f"run {index}: {label}: {','.join(ecfg.checkpoints)}, {ecfg.threat_model} eps {eps:.6g}, "
        f"{len(test)} points", err=True)

    def progress(ckpt, attack, row):
        flagged = f" FLAGGED {row['guards_flagged']}" if row.get("guards_flagged") else ""
        say(f"  {run_id} {ckpt}/{attack}: {row['accuracy']:.4f} on {row['n_eval']} points "
            f"({row['eval_seconds']:.1f}s){flagged}", err=True)

    lock = FileLock(store.lock_path(run_id))  # the runner's per-cell lock: one writer per run
    store.lock_path(run_id).parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=DEFAULTS.lock_wait_s)  # as the runner: a `bench status` probe must not skip us
    except Timeout:
        click.echo(f"  BUSY {label}: another process holds its lock; left alone", err=True)
        return "busy", "another process holds its lock"
    try:
        rows = evaluate_run(store, run_id, ecfg, test, resolve_device(device), progress)
        if store.has(run_id, DONE):  # DONE records the files the run now has: a later deletion reads as missing
            store.mark(run_id, DONE, read_json(store.run_dir(run_id) / DONE))
        return "done", rows
    except GuardFailure as exc:
        click.echo(f"  REFUSED {label}: {exc}", err=True)
        return "refused", str(exc)
    except StoreError as exc:  # a damaged or refused stored file: this run only, named at the end
        click.echo(f"  DAMAGED {label}: {exc}", err=True)
        return ("unsafe" if exc.kind == "unsafe" else "damaged"), str(exc)
    finally:
        lock.release()


_BUNDLES: dict[tuple, object] = {}  # per process: runs of one setting share their data (bench.data.load_keyed)


def _evaluate(store, jobs, data_dir, device, damaged: list[tuple[str, str]] | None = None, workers: int = 1) -> None:
    """Every job, one after another, or `workers` runs at once in spawned processes with an equal share of the
    CPU threads (AutoAttack on a small model leaves threads waiting on each other: two one-thread processes
    use two cores better)."""
    damaged = list(damaged or [])
    results = str(Path(store.root).absolute())
    args = [(results, run_id, config, ecfg, data_dir, device, f"{i}/{len(jobs)}")
            for i, (run_id, config, ecfg) in enumerate(jobs, 1)]
    if workers > 1 and len(jobs) > 1:
        from bench.execution.executors import worker_pool

        with worker_pool(workers) as pool:  # each worker with its share of the cores (worker_pool)
            outcomes = list(pool.map(_evaluate_job, *zip(*args)))
    else:
        outcomes = [_evaluate_job(*a) for a in args]
    refused, busy, summary, unsafe = [], [], [], []
    for (run_id, _, ecfg), (status, value) in zip(jobs, outcomes):
        if status == "done":
            summary += [r for r in value if r["eval_attack"] in ecfg.attacks + ("worst",)]
        elif status == "refused":
            refused.append(run_id)
        elif status == "busy":
            busy.append(run_id)
        else:
            damaged.append((run_id, value))
            unsafe += [run_id] if status == "unsafe" else []
    _print_summary(summary)
    for run_id, why in dict.fromkeys(damaged):
        click.echo(f"damaged: run {run_id}: {why}", err=True)
    if refused or busy or damaged:
        n_damaged = len(dict.fromkeys(r for r, _ in damaged))
        click.echo(f"{len(refused)} run(s) refused by a guard{': ' + ', '.join(refused) if refused else ''}; "
                   f"{len(busy)} busy elsewhere{': ' + ', '.join(busy) if busy else ''}; "
                   f"{n_damaged} with a damaged store file ({_damage_advice(n_damaged, len(set(unsafe)))})",
                   err=True)
        sys.exit(1)


def _damage_advice(n_damaged: int, n_unsafe: int) -> str:
    """What to do about the damaged runs, true for each: `bench run` repairs damaged files, never a refused one
    (a planted pickle: it fails the cell, naming the file)."""
    unsafe = ("a refused file is never loaded nor repaired: if you did not put it there, delete it and `bench run` "
              "trains the cell again")
    if n_unsafe and n_unsafe == n_damaged:
        return f"`bench status` shows it; {unsafe}"
    return "`bench status` shows it; `bench run` repairs it" + (f", not a refused one: {unsafe}" if n_unsafe else "")


def _print_summary(rows: list[dict]) -> None:
    """One line per (run, checkpoint, threat model, eps, n): accuracy per attack, then the flagged guards."""
    cells: dict[tuple, list[str]] = {}
    flagged: dict[tuple, set[str]] = {}
    for r in rows:
        key = (r["run_id"], r["checkpoint"], r["threat_model"], r["eval_eps"], r["n_eval"])
        cells.setdefault(key, []).append(f"{r['eval_attack']} {r['accuracy']:.4f}")
        flagged.setdefault(key, set()).update(f for f in r.get("guards_flagged", "").split(",") if f)
    for key, line in cells.items():
        run_id, ckpt, tm, eps, n = key
        flags = f"  guards flagged: {','.join(sorted(flagged[key]))}" if flagged[key] else ""
        say(f"{run_id} {ckpt} {tm} eps {eps:.6g} n {n}: {', '.join(line)}{flags}")
