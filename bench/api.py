"""The Python API: evaluate any `torch.nn.Module` with the harness's evaluation suite, read the results store
as one tidy DataFrame, and run a matrix the way `bench run` does.

    import bench.api as api

    rows = api.evaluate(my_model, name="my-net", dataset="cifar10", eval_attacks="natural,pgd20,aa")
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

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import catalog
from bench.config.catalog import DEFAULTS, EXTERNAL
from bench.config.names import UsageError, suggest

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = ["IDENTITY_COLUMNS", "CellsFailed", "check_evaluation", "evaluate", "external_run_id", "load_model_file", "results", "run"]

log = logging.getLogger(__name__)

# The columns a result frame starts with: which run, which checkpoint, which attack; then the number.
IDENTITY_COLUMNS = ("run_id", "method", "train_attack", "dataset", "model", "seed", "checkpoint", "eval_attack",
                    "threat_model", "eval_eps", "n_eval", "n_robust", "accuracy", "attack_relation")
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CHECKPOINT_RULE = re.compile(r"[a-z][a-z0-9_]{0,31}")
NOT_CHECKPOINTS = ("train_state",)  # <checkpoint>.pt must not be another file of a run folder


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


def results(store: str | Path = "results", with_flags: bool = True) -> pd.DataFrame:
    """Every result row of every finished run in `store` (trained runs and external models alike), one row per
    run x checkpoint x evaluation setting x attack, identity columns first (IDENTITY_COLUMNS), then every
    column docs/results.md lists; `flags` (with_flags): the per-test-point robust flags as a "0110..." string.
    Read through bench.report.load_frame (torch-free). UsageError when `store` is not a results store."""
    from bench.report import load_frame

    if not Path(store, "runs").is_dir():
        raise UsageError(f"No results store at {store} (no {Path(store, 'runs')}): run `bench run` or "
                         f"bench.api.evaluate first.")
    return _tidy(load_frame(store, with_flags=with_flags))


# ---- evaluate ---------------------------------------------------------------------------------------------

def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        hint = (f" (e.g. '{re.sub(r'[^a-z0-9._-]+', '-', name.lower()).strip('-._')}')"
                if isinstance(name, str) and name.strip() else "")
        raise UsageError(f"Name {name!r}: give 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a "
                         f"letter or digit{hint}: it is the model's method name in the store and the report.")
    if name in catalog.METHODS or name in catalog.METHOD_ALIASES:
        raise UsageError(f"Name '{name}' is a method of the harness: its rows would be read as that method's. "
                         f"Pick another name (e.g. '{name}-external').")
    return name


def _check_checkpoint(label: Any) -> str:
    if not isinstance(label, str) or not CHECKPOINT_RULE.fullmatch(label) or label in NOT_CHECKPOINTS:
        raise UsageError(f"Checkpoint label {label!r}: give 1 to 32 lowercase letters, digits or '_', starting "
                         f"with a letter (not {', '.join(NOT_CHECKPOINTS)}); default 'external'.")
    return label


def _attacks(eval_attacks: str | Iterable[str]) -> tuple[str, ...]:
    from bench.config.names import lookup, split_list
    from bench.evaluation.attacks import EVAL_ATTACKS

    suite = tuple(dict.fromkeys(lookup("eval attack", a, EVAL_ATTACKS) and a.strip().lower()
                                for a in split_list(eval_attacks)))
    if not suite:
        raise UsageError("eval_attacks is empty.")
    return suite


def _count(value: Any, what: str, high: int | None = None, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f" and at most {high:,}" if high is not None else ""
        raise UsageError(f"{what} must be an integer >= {low}{bound}, got {value!r}.")
    return value


def _serialise(model: torch.nn.Module) -> bytes:
    """The torch.save bytes of the module's state dict as CPU tensors (serialised in memory, as the trainer
    saves checkpoints: equal tensors give equal bytes, so the same weights give the same run)."""
    import torch

    state = model.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UsageError(f"The model's state_dict holds entries that are not tensors ({', '.join(bad[:5])}): "
                         f"only tensors are stored, and loaded back weights-only.")
    cpu = {k: v.detach().cpu() for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(cpu, buffer)
    return buffer.getvalue()


def external_train(name: str, dataset: str, weights_sha: str) -> dict[str, Any]:
    """The "train" dict of an external model's config.json: every training-config field the result rows copy
    (bench.evaluation.evaluate.TRAIN_COLUMNS), null where the harness did not train it."""
    from bench.evaluation.evaluate import TRAIN_COLUMNS

    train: dict[str, Any] = {k: None for k in TRAIN_COLUMNS}
    train.update(method=name, train_attack=EXTERNAL, dataset=dataset, model=EXTERNAL, seed=0, method_params={},
                 weights_sha=weights_sha)
    return train


def external_run_id(train: dict[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of the canonical JSON of the "train" dict (as TrainConfig.run_id)."""
    canonical = json.dumps(train, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


_DATA: dict[tuple, Any] = {}  # the last test data loaded (an evaluation per budget reuses it)


def _test_split(dataset: str, test_subset: int | None, data_dir: str | None):
    from bench.data import load_keyed

    key = (dataset, DEFAULTS.val_size, None, test_subset)  # the test points depend on the dataset and N only
    if key not in _DATA:
        _DATA.clear()
    return load_keyed(key, data_dir, _DATA).test


class _Borrowed:
    """The caller's module for the length of an evaluation: on the device, in eval mode, parameters without
    gradients; afterwards its modes, requires_grad flags and device (when it had one) are as they were."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        import itertools

        self.model, self.device = model, device
        self.modes = [(m, m.training) for m in model.modules()]
        self.grads = [(p, p.requires_grad) for p in model.parameters()]
        devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
        self.home = devices.pop() if len(devices) == 1 else None

    def __enter__(self) -> torch.nn.Module:
        return self.model.to(self.device).eval()

    def __exit__(self, *exc) -> None:
        if self.home is not None:
            self.model.to(self.home)
        for m, training in self.modes:
            m.training = training
        for p, flag in self.grads:
            p.requires_grad_(flag)


def _check_outputs(model: torch.nn.Module, x: torch.Tensor, num_classes: int, dataset: str) -> None:
    """One forward pass on a few test inputs: logits of shape (n, classes), or a UsageError saying what came."""
    import torch

    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the caller's module: any error is its own
        raise UsageError(f"The model fails on {dataset} inputs of shape {tuple(x.shape)} in [0, 1] "
                         f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                         f"): does it take this dataset's images?") from None
    if not isinstance(out, torch.Tensor) or out.shape != (len(x), num_classes):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UsageError(f"The model returns {got} for {len(x)} {dataset} inputs; expected logits of shape "
                         f"({len(x)}, {num_classes}).")


def check_evaluation(*, name: str, dataset: str, eval_attacks: str | Sequence[str], eps: float | str | None = None,
                     threat_model: str = "linf", test_subset: int | None = None, checkpoint: str = EXTERNAL,
                     eval_batch_size: int = DEFAULTS.eval_batch_size, eval_precision: str = "fp32",
                     seed: int = 0) -> tuple[str, str, Any, tuple[str, ...], float]:
    """`evaluate`'s arguments checked without a model (UsageError naming the bad one; nothing read or written):
    (name, checkpoint label, the dataset's entry, the attacks, eps in pixel units)."""
    from bench.config import parse_eps
    from bench.config.catalog import default_eps
    from bench.config.limits import MAX_SEED
    from bench.config.names import lookup
    from bench.data import DATASETS
    from bench.evaluation.guards import check_eps

    name, label = _check_name(name), _check_checkpoint(checkpoint)
    info = lookup("dataset", str(dataset), DATASETS)
    suite = _attacks(eval_attacks)
    if threat_model not in ("linf", "l2"):
        raise UsageError(f"Unknown threat model '{threat_model}' (choices: l2, linf).")
    if eval_precision not in ("fp32", "tf32"):
        raise UsageError(f"Unknown eval precision '{eval_precision}' (choices: fp32, tf32).")
    budget = default_eps(info.name, threat_model) if eps is None else parse_eps(eps, threat_model)
    try:
        check_eps(budget, threat_model, info.in_channels * info.image_size ** 2)
    except UsageError as exc:
        raise UsageError(f"eps on {info.name} ({info.in_channels} x {info.image_size} x {info.image_size} "
                         f"inputs): {exc}") from None
    if test_subset is not None:
        _count(test_subset, f"test_subset (at most {info.name}'s {info.n_test:,} test points)", info.n_test)
    _count(eval_batch_size, "eval_batch_size")
    _count(seed, "seed", MAX_SEED, low=0)
    return name, label, info, suite, budget


@contextlib.contextmanager
def _locked(store, run_id: str, name: str) -> Iterator[None]:
    """The run's lock (the runner's and `bench eval`'s: one writer per run); RuntimeError when it stays held."""
    from filelock import FileLock, Timeout

    store.lock_path(run_id).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(store.lock_path(run_id))
    try:
        lock.acquire(timeout=DEFAULTS.lock_wait_s)
    except Timeout:
        raise RuntimeError(f"Another process holds the lock of run {run_id} ({name}) in {store.root}: it is being "
                           f"evaluated there; try again when it is done.") from None
    try:
        yield
    finally:
        lock.release()


def _write_run(store, config: dict[str, Any], label: str, data: bytes) -> None:
    """An external model's run folder: config.json (kept when readable: the first evaluation's provenance) and
    <label>.pt, the state dict evaluated (written again when missing or not these bytes: damaged)."""
    from bench.store import StoreError, atomic_path, check_config, file_sha, read_json, write_json

    run_dir = store.run_dir(config["run_id"])
    try:
        check_config(read_json(run_dir / "config.json"), run_dir / "config.json")
    except StoreError:  # missing (a new run) or damaged
        write_json(run_dir / "config.json", config)
    path = run_dir / f"{label}.pt"
    if not path.is_file() or file_sha(path) != config["train"]["weights_sha"]:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


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
    from bench.data import to_float
    from bench.evaluation.evaluate import evaluate_run
    from bench.evaluation.guards import refuse_unsafe
    from bench.provenance import provenance, resolve_device
    from bench.store import DONE, Store, eval_group, file_sha

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"evaluate() takes a torch.nn.Module, got a {type(model).__name__}.")
    name, label, info, suite, budget = check_evaluation(
        name=name, dataset=dataset, eval_attacks=eval_attacks, eps=eps, threat_model=threat_model,
        test_subset=test_subset, checkpoint=checkpoint, eval_batch_size=eval_batch_size,
        eval_precision=eval_precision, seed=seed)
    dev = resolve_device(device)
    from bench.config.preflight import check_results_dir

    check_results_dir(results)  # probes and leaves nothing
    data = _serialise(model)
    sha = file_sha(data=data)
    train = external_train(name, info.name, sha)
    run_id = external_run_id(train)
    test = _test_split(info.name, test_subset, data_dir)
    ecfg = EvalConfig(attacks=suite, eps=budget, threat_model=threat_model, test_subset=test_subset,
                      batch_size=eval_batch_size, seed=seed, checkpoints=(label,), precision=eval_precision)
    store = Store(results)
    with _Borrowed(model, dev) as net:
        x = to_float(test.x[:min(len(test), eval_batch_size, 8)]).to(dev)
        _check_outputs(net, x, info.num_classes, info.name)
        refuse_unsafe(net, x, budget, threat_model)  # GuardFailure before anything is written

        def progress(ckpt: str, attack: str, row: dict) -> None:
            flagged = f" FLAGGED {row['guards_flagged']}" if row.get("guards_flagged") else ""
            log.info("  %s [%s] %s/%s: %.4f on %d points (%.1fs)%s", name, run_id, ckpt, attack, row["accuracy"],
                     row["n_eval"], row["eval_seconds"], flagged)

        with _locked(store, run_id, name):
            _write_run(store, {"run_id": run_id, "train": train, "provenance": provenance(dev),
                               "external": {"model_class": f"{type(model).__module__}.{type(model).__qualname__}",
                                            "source": source}}, label, data)
            log.info("%s [%s]: %s, %s eps %.6g, %d points", name, run_id, ",".join(suite), threat_model, budget,
                     len(test))
            evaluate_run(store, run_id, ecfg, test, dev, progress, model=net)
            if not store.has(run_id, DONE):
                store.mark(run_id, DONE)
    group = eval_group(label, threat_model, budget, len(test), eval_precision)
    records = [store.read_eval(run_id, group, a) for a in (*suite, "worst")]
    import pandas as pd

    return _tidy(pd.DataFrame([{**r["row"], "flags": r["flags"]} for r in records]))


# ---- a model from a file (bench eval --model-file) ---------------------------------------------------------

def load_model_file(spec: str, weights: str | Path | None = None) -> torch.nn.Module:
    """The nn.Module that FACTORY() builds in PATH.py (`spec` = "PATH.py:FACTORY"), with the state dict in
    `weights` loaded into it (torch.load with weights_only=True; strict). UsageError, saying what is wrong,
    for a missing file or factory, a factory that fails or returns no nn.Module, and weights that are not a
    state dict or do not fit the model."""
    import torch

    path_text, sep, factory = str(spec).rpartition(":")
    if not sep or not path_text or not factory.isidentifier():
        raise UsageError(f"--model-file takes PATH.py:FACTORY (a Python file and the function in it that builds the "
                         f"model), got '{spec}'.")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"Model file '{path_text}' does not exist." if not path.exists()
                         else f"Model file '{path_text}' is not a file.")
    if path.suffix != ".py":
        raise UsageError(f"Model file '{path_text}' is not a Python file (.py).")
    module_name = "bench_model_file_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # classes defined there (dataclasses, pickling) look themselves up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: any error is reported, with its kind
        sys.modules.pop(module_name, None)
        raise UsageError(f"Importing model file '{path_text}' failed: {type(exc).__name__}: {exc}") from None
    build = getattr(module, factory, None)
    if build is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module_name]
        raise UsageError(f"Model file '{path_text}' has no '{factory}'.{suggest(factory, names)} "
                         f"(defined there: {', '.join(sorted(names)) or 'nothing callable'})")
    if not callable(build):
        raise UsageError(f"'{factory}' in '{path_text}' is a {type(build).__name__}, not a function that builds the "
                         f"model.")
    try:
        model = build()
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{factory}() in '{path_text}' raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{factory}() in '{path_text}' returned a {type(model).__name__}, not a torch.nn.Module.")
    if weights is not None:
        load_weights(model, weights, f"the model {factory}() builds")
    return model


def _load_error(text: str) -> str:
    """The line of a torch.load error that says what went wrong (its weights-only refusal is a page of advice)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("Unsupported")), None)
    return (reason or (lines[0] if lines else "no message"))[:300]


def load_weights(model: torch.nn.Module, weights: str | Path, what: str = "the model") -> None:
    """Load the state dict saved in `weights` into `model` (weights_only=True, strict), or a UsageError."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise UsageError(f"Weights file '{weights}' does not exist." if not path.exists()
                         else f"Weights file '{weights}' is not a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise UsageError(f"Weights file '{weights}' cannot be loaded with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {_load_error(str(exc))}): give a state dict saved with "
                         f"torch.save(model.state_dict(), FILE).") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [k for k, v in state.items() if isinstance(v, dict) and v
                  and all(isinstance(t, torch.Tensor) for t in v.values())] if isinstance(state, dict) else []
        held = (f"a dict with keys {', '.join(map(str, list(state)[:6]))}" if isinstance(state, dict) and state
                else f"a {type(state).__name__}" + (" (empty)" if isinstance(state, dict) else ""))
        hint = (f" Its entry '{nested[0]}' looks like one: torch.save(checkpoint['{nested[0]}'], FILE)."
                if nested else "")
        raise UsageError(f"Weights file '{weights}' is not a state dict (a dict of tensors): it holds {held}.{hint}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        text = " ".join(str(exc).split())
        raise UsageError(f"Weights file '{weights}' does not fit {what}: {text[:600]}") from None


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
    from bench.config.preflight import check_results_dir, load_matrix_data

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
