"""The Python API: evaluate any `torch.nn.Module` with the harness's evaluation suite, read the results store
as one tidy DataFrame, and run a matrix the way `bench run` does.

    import bench.api as api

    rows = api.evaluate(my_model, name="my-net", dataset="cifar10", eval_attacks="natural,pgd20,aa")
    zoo = api.robustbench_model("Wong2020Fast", "models", "cifar10", "linf")   # RobustBench's zoo, a local file
    df = api.results("results")               # every finished row, identity columns first; my-net among them
    df = api.run(methods="at,lrat", train_attack="pgd", epochs=10, results="results")   # the cells' rows

`evaluate` goes through the code `bench eval` runs (bench.evaluation.evaluate.evaluate_run: the guards, one
atomic file per attack, the per-example worst row, resume per attack) and stores the rows as a run of their own,
so that `bench report`, `bench status` and `results` show the model beside the trained runs. How an external
model lives in the store (docs/results.md, "External models"):

    <results>/runs/<run_id>/config.json      {"run_id", "train": {method: NAME, train_attack: "external",
                                              model: "external", dataset, seed: 0, weights_sha, the other
                                              training fields null}, "external": {model_class, source},
                                              "provenance"}
                            <checkpoint>.pt  the module's state dict (CPU tensors), as evaluated
                            evals/<checkpoint>-<threat>-eps<eps>-n<N>/<attack>.json, worst.json
                            DONE

The run id hashes that "train" dict: the name, the dataset and `weights_sha` (the first 16 hex digits of the
SHA-256 of the stored state dict file, which is also every row's `checkpoint_sha`). The same model under the
same name is the same run: evaluating it again reuses its stored rows and adds the missing attacks; other
weights under the same name are another run. Every eval attack is `unseen` to it (it trained with nothing
the harness knows: bench/config/relations.py). Importing this module imports nothing heavy; torch and pandas
are imported by the calls.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config.catalog import DEFAULTS, EXTERNAL
from bench.config.names import UsageError, suggest

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = ["IDENTITY_COLUMNS", "CellsFailed", "evaluate", "load_model_file", "results", "robustbench_model", "run"]

log = logging.getLogger(__name__)

# The columns a result frame starts with: which run, which checkpoint, which attack; then the number.
IDENTITY_COLUMNS = ("run_id", "method", "train_attack", "dataset", "model", "seed", "checkpoint", "eval_attack",
                    "threat_model", "eval_eps", "n_eval", "n_robust", "accuracy", "attack_relation")


class CellsFailed(RuntimeError):
    """`run`: some cells failed (the others finished). `rows`: the finished cells' rows; `failed`: (cell, reason)."""

    def __init__(self, failed: list[tuple[str, str]], rows: pd.DataFrame):
        self.failed, self.rows = failed, rows
        super().__init__(f"{len(failed)} cell(s) failed: " + "; ".join(f"{c}: {r}" for c, r in failed))


# ---- results ----------------------------------------------------------------------------------------------

def _tidy(rows: pd.DataFrame) -> pd.DataFrame:
    """Identity columns first (those present), the others in their stored order; rows sorted as results.csv."""
    import pandas as pd

    if rows.empty and not len(rows.columns):
        return pd.DataFrame(columns=list(IDENTITY_COLUMNS))
    first = [c for c in IDENTITY_COLUMNS if c in rows.columns]
    rows = rows[first + [c for c in rows.columns if c not in first]]
    keys = [c for c in ("method", "train_attack", "seed", "run_id", "checkpoint", "eval_attack") if c in rows]
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)


def results(store: str | Path = "results", with_flags: bool = True, skip_damaged: bool = False) -> pd.DataFrame:
    """Every result row of every finished run in `store` (trained runs and external models alike), one row per
    run x checkpoint x evaluation setting x attack, identity columns first (IDENTITY_COLUMNS), then every
    column docs/results.md lists; `flags` (with_flags): the per-test-point robust flags as a "0110..." string.
    Read through bench.report.load_frame (torch-free). UsageError when `store` is not a results store. As
    `bench report`: a finished run whose rows cannot be used (stale or damaged, bench/store_integrity.py) raises
    bench.store_integrity.RunsRefused naming it, unless `skip_damaged` leaves it out."""
    from bench.report import load_frame
    from bench.store import Store
    from bench.store_integrity import usable_runs

    if not Path(store, "runs").is_dir():
        raise UsageError(f"No results store at {store} (no {Path(store, 'runs')}): run `bench run` or "
                         f"bench.api.evaluate first.")
    usable, _ = usable_runs(Store(store), skip_damaged, "bench.api.results(..., skip_damaged=True) leaves them out")
    return _tidy(load_frame(store, with_flags=with_flags, run_ids=usable))


# ---- evaluate ---------------------------------------------------------------------------------------------

def evaluate(model: torch.nn.Module, *, name: str, dataset: str, eval_attacks: str | Sequence[str],
             eps: float | str | None = None, threat_model: str = "linf", test_subset: int | None = None,
             results: str | Path = "results", checkpoint: str = EXTERNAL,
             eval_batch_size: int = DEFAULTS.eval_batch_size, eval_precision: str = "fp32", seed: int = 0,
             device: str = "auto", data_dir: str | None = None, source: str = "bench.api.evaluate") -> pd.DataFrame:
    """Evaluate `model` (any nn.Module taking inputs in [0, 1] and returning logits) with the harness's suite
    and store its rows under `name` in the results store `results`; returns this evaluation's rows (the
    attacks asked for and the per-example worst row), identity columns first, with `flags`.

    `dataset`, `eval_attacks` (comma-separated or a list), `threat_model`, `test_subset` (the first N test
    points on CIFAR, class-balanced otherwise; default the whole test set), `eval_batch_size`,
    `eval_precision` and `seed` are `bench eval`'s options; `eps` (pixel units, 8/255 or "8/255") defaults to
    the dataset's usual budget for the threat model. `checkpoint` labels the rows (their `checkpoint` column).
    `device`: auto (CUDA when available), cpu or cuda. The module is moved to the device and put in eval mode
    for the evaluation, its parameters' gradients off; afterwards its modes, gradient flags and device are
    restored. Bad input raises UsageError (a ValueError) before anything is written; a refusing guard,
    GuardFailure; the store's own files, StoreError. Evaluating the same weights under the same name again
    reuses the stored rows (resuming an interrupted evaluation per attack) and adds the missing ones.
    `source`: how the model came, recorded in config.json ("external": {"model_class", "source"}).
    """
    import torch

    from bench.config import EvalConfig
    from bench.config.preflight import check_results_dir
    from bench.data import to_float
    from bench.evaluation import external
    from bench.evaluation.guards import refuse_unsafe
    from bench.provenance import provenance, resolve_device
    from bench.store import Store, eval_group, file_sha

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"evaluate() takes a torch.nn.Module, got a {type(model).__name__}.")
    external.check_parameters(model)
    name, label, info, suite, budget = external.check_evaluation(
        name=name, dataset=dataset, eval_attacks=eval_attacks, eps=eps, threat_model=threat_model,
        test_subset=test_subset, checkpoint=checkpoint, eval_batch_size=eval_batch_size,
        eval_precision=eval_precision, seed=seed)
    dev = resolve_device(device)
    check_results_dir(results)  # probes and leaves nothing
    data = external.serialise(model)
    sha = file_sha(data=data)
    train = external.external_train(name, info.name, sha)
    run_id = external.external_run_id(train)
    test = external.test_split(info.name, test_subset, data_dir)
    ecfg = EvalConfig(attacks=suite, eps=budget, threat_model=threat_model, test_subset=test_subset,
                      batch_size=eval_batch_size, seed=seed, checkpoints=(label,), precision=eval_precision)
    store = Store(results)
    config = {"run_id": run_id, "train": train, "provenance": provenance(dev),
              "external": {"model_class": f"{type(model).__module__}.{type(model).__qualname__}", "source": source}}
    with external.Borrowed(model, dev) as net:
        x = to_float(test.x[:min(len(test), eval_batch_size, 8)]).to(dev)
        external.check_outputs(net, x, info.num_classes, info.name)
        refuse_unsafe(net, x, budget, threat_model)  # GuardFailure before anything is written
        _evaluate_and_store(store, config, label, data, ecfg, test, net, dev)
    return _stored_rows(store, run_id, eval_group(label, threat_model, budget, len(test), eval_precision), suite)


def _evaluate_and_store(store, config: dict[str, Any], label: str, data: bytes, ecfg, test, net, dev) -> None:
    """Under the run's lock: its folder (config.json, <label>.pt holding `data`), the suite's rows one attack at
    a time (bench eval's evaluate_run: guards, worst row, resume), then DONE; a failure removes what it wrote."""
    from bench.evaluation import external
    from bench.evaluation.evaluate import evaluate_run
    from bench.store import DONE

    run_id, name = config["run_id"], config["train"]["method"]

    def progress(ckpt: str, attack: str, row: dict) -> None:
        flagged = f" FLAGGED {row['guards_flagged']}" if row.get("guards_flagged") else ""
        log.info("  %s [%s] %s/%s: %.4f on %d points (%.1fs)%s", name, run_id, ckpt, attack, row["accuracy"],
                 row["n_eval"], row["eval_seconds"], flagged)

    with external.locked(store, run_id, name), external.removed_on_failure(store, run_id):
        external.write_run(store, config, label, data)
        log.info("%s [%s]: %s, %s eps %.6g, %d points", name, run_id, ",".join(ecfg.attacks), ecfg.threat_model,
                 ecfg.eps, len(test))
        evaluate_run(store, run_id, ecfg, test, dev, progress, model=net)
        if not store.has(run_id, DONE):
            store.mark(run_id, DONE)


def _stored_rows(store, run_id: str, group: str, suite: tuple[str, ...]) -> pd.DataFrame:
    """The rows of the attacks asked for and the worst row, as stored, with their flags."""
    import pandas as pd

    records = [store.read_eval(run_id, group, a) for a in (*suite, "worst")]
    return _tidy(pd.DataFrame([{**r["row"], "flags": r["flags"]} for r in records]))


def load_model_file(spec: str, weights: str | Path | None = None) -> torch.nn.Module:
    """The nn.Module that FACTORY() builds in PATH.py (`spec` = "PATH.py:FACTORY"), with the state dict in
    `weights` loaded into it (weights-only, strict); UsageError saying what is wrong otherwise (what `bench eval
    --model-file` runs: bench.evaluation.external.load_model_file)."""
    from bench.evaluation.external import load_model_file as load

    return load(spec, weights)


def robustbench_model(name: str, model_dir: str | Path, dataset: str = "cifar10",
                      threat_model: str = "linf") -> torch.nn.Module:
    """RobustBench's zoo model `name` (e.g. "Wong2020Fast") built by robustbench.utils.load_model from its
    checkpoint already in `model_dir` (RobustBench's layout: model_dir/cifar10/Linf/Wong2020Fast.pt), never
    downloaded: UsageError naming the expected path when it is missing. What `bench eval --robustbench` runs;
    pass the module to `evaluate`:

        net = api.robustbench_model("Wong2020Fast", "models", "cifar10", "linf")
        api.evaluate(net, name="wong2020fast", dataset="cifar10", eval_attacks="natural,pgd20,aa")
    """
    from bench.evaluation.robustbench_zoo import robustbench_model as load

    return load(name, model_dir, dataset, threat_model)


# ---- run --------------------------------------------------------------------------------------------------

_NOT_IN_API = {"dry_run": "`bench run --dry-run` prints the plan", "as_json": "`bench run --dry-run --json`",
               "speed_json": "`bench run --dry-run --speed-json`", "grad_steps_per_s": "`bench run --dry-run`",
               "executor": "the Python API runs cells in this process (workers=N: in N processes)",
               "ray_address": "`bench run --executor ray`", "gpus_per_cell": "`bench run --executor ray`",
               "cpus_per_cell": "`bench run --executor ray`", "max_retries": "`bench run --executor ray`"}


def _flag_params() -> dict[str, Any]:
    """`bench run`'s click parameters by their flag's name in Python form (--method-param -> method_param)."""
    from bench.cli.run import run as command

    return {max(p.opts, key=len).lstrip("-").replace("-", "_"): p for p in command.params}


def _convert(key: str, param: Any, value: Any) -> Any:
    import click

    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise UsageError(f"run(): {key} is a switch: True or False, got {value!r}.")
        return value
    if param.multiple:  # --method-param: one string or several
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    if value is None or isinstance(param.type, click.types.StringParamType):
        return value  # names, lists and budgets: resolved by the matrix stage, which names the parameter
    if isinstance(param.type, click.Path):
        if not Path(value).exists():
            raise UsageError(f"run(): {key} '{value}' does not exist.")
        return str(value)
    try:
        return param.type.convert(value, param, None)
    except click.BadParameter as exc:
        raise UsageError(f"run(): {key}: {exc.message}") from None


def run(**options: Any) -> pd.DataFrame:
    """Train and evaluate a matrix as `bench run` does, with its flags as keyword arguments (`--train-attack
    pgd,cw` is train_attack="pgd,cw"; lists work too: methods=["at", "lrat"]; --method-param is method_param,
    one string or a list; --compile is compile; a matrix file is config="experiments/smoke.toml"): the same
    resolution (defaults < matrix file < the arguments given), the same checks (UsageError, nothing written),
    the same runner and store. Finished cells are skipped, interrupted ones resume. Returns the rows of the
    matrix's cells (identity columns first, with `flags`); CellsFailed, after the others finished, when a
    cell failed. Not taken: the --dry-run family and the Ray executor's options (use `bench run`)."""
    from bench.cli.common import RUN_DEFAULTS
    from bench.config.matrix_cells import resolve
    from bench.config.matrix_file import load_matrix_file
    from bench.config.matrix_merge import merge
    from bench.config.preflight import check_results_dir
    from bench.execution.matrix_data import load_matrix_data

    params = _flag_params()
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key in _NOT_IN_API or (key in params and params[key].name in _NOT_IN_API):
            raise UsageError(f"run() does not take {key}: {_NOT_IN_API.get(key) or _NOT_IN_API[params[key].name]}.")
        if key not in params:
            choices = sorted(k for k, p in params.items() if p.name not in _NOT_IN_API)
            raise UsageError(f"run() has no option '{key}'.{suggest(key, choices)} (its options are `bench run`'s "
                             f"flags: {', '.join(choices)})")
        values[params[key].name] = _convert(key, params[key], value)
    from bench.cli.run import run as command

    defaults = command.make_context("run", []).params  # as click resolves them (a flag's default is False)
    settings = {k: v for k, v in defaults.items() if k not in RUN_DEFAULTS}
    settings.update({k: v for k, v in values.items() if k not in RUN_DEFAULTS})
    file_values = load_matrix_file(settings["config"]) if settings["config"] else {}
    cells = resolve(merge(RUN_DEFAULTS, file_values, {k: v for k, v in values.items() if k in RUN_DEFAULTS}))
    results_dir = str(settings["results"])
    check_results_dir(results_dir)
    from bench.execution.executors import LocalExecutor
    from bench.provenance import resolve_device
    from bench.store import Store
    from bench.training.loop import RuntimeOptions

    dev = resolve_device(settings["device"])
    data = load_matrix_data(cells, settings["data_dir"])
    runtime = RuntimeOptions(channels_last=settings["channels_last"], compile=settings["compile_model"])
    executor = LocalExecutor(Store(results_dir), dev, settings["data_dir"], data, workers=settings["workers"],
                             runtime=runtime)
    outcomes = executor.run(cells, force=settings["force"])
    for o in outcomes:
        if o.status == "busy":
            log.warning("%s: another process holds its lock; its rows are not in the returned frame", o.cell.label)
    frame = results(results_dir)
    ids = {c.train.run_id for c in cells}
    rows = frame[frame.run_id.isin(ids)].reset_index(drop=True) if "run_id" in frame else frame
    failed = [(o.cell.label, o.reason) for o in outcomes if o.status == "failed"]
    if failed:
        raise CellsFailed(failed, rows)
    return rows
