"""External models: any `torch.nn.Module` evaluated with the harness's suite and stored as a run of its own
(bench.api.evaluate, `bench eval --model-file`). The checks of the arguments (before anything is read or
written), the run's identity (its "train" dict and run id), the module borrowed for the evaluation (eval mode,
then given back as it was), the run folder's files, and a model built from a Python file with weights loaded
weights-only. The store layout is described in bench/api.py and docs/results.md ("External models").
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.config import catalog
from bench.config.catalog import DEFAULTS, EXTERNAL
from bench.config.names import UsageError, suggest

NAME_RULE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CHECKPOINT_RULE = re.compile(r"[a-z][a-z0-9_]{0,31}")
NOT_CHECKPOINTS = ("train_state",)  # <checkpoint>.pt must not be another file of a run folder


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        hint = (f" (e.g. '{re.sub(r'[^a-z0-9._-]+', '-', name.lower()).strip('-._')}')"
                if isinstance(name, str) and name.strip() else "")
        raise UsageError(f"Name {name!r}: give 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a "
                         f"letter or digit{hint}: it is the model's method name in the store and the report.")
    if name in catalog.METHODS or name in catalog.METHOD_ALIASES:
        raise UsageError(f"Name '{name}' is a method of the harness: its rows would be read as that method's. "
                         f"Pick another name (e.g. '{name}-external').")
    return name


def check_checkpoint(label: Any) -> str:
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


def serialise(model: torch.nn.Module) -> bytes:
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


def test_split(dataset: str, test_subset: int | None, data_dir: str | None):
    from bench.data import load_keyed

    key = (dataset, DEFAULTS.val_size, None, test_subset)  # the test points depend on the dataset and N only
    if key not in _DATA:
        _DATA.clear()
    return load_keyed(key, data_dir, _DATA).test


class Borrowed:
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


def check_parameters(model: torch.nn.Module) -> None:
    """A model without parameters is refused: nothing in it was trained, and its stored state dict (the run's
    identity) would not tell two such models apart."""
    if not any(True for _ in model.parameters()):
        raise UsageError(f"The model ({type(model).__name__}) has no parameters: there is nothing trained to "
                         f"evaluate, and its stored weights would not identify it. Give a module whose weights are "
                         f"nn.Parameter (or nn.Module layers).")


def check_outputs(model: torch.nn.Module, x: torch.Tensor, num_classes: int, dataset: str) -> None:
    """One forward pass on a few test inputs: finite logits of shape (n, classes) with a gradient path from the
    input (gradient attacks need one), or a UsageError saying what came. Run before the run folder exists."""
    import torch

    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the caller's module: any error is its own
        raise UsageError(f"The model fails on {dataset} inputs of shape {tuple(x.shape)} in [0, 1] "
                         f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                         f"): does it take this dataset's images?") from None
    if not isinstance(out, torch.Tensor) or out.shape != (len(x), num_classes):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UsageError(f"The model returns {got} for {len(x)} {dataset} inputs; expected logits of shape "
                         f"({len(x)}, {num_classes}).")
    if not bool(torch.isfinite(out).all()):
        raise UsageError(f"The model returns non-finite logits (NaN or infinite) on {len(x)} {dataset} test inputs: "
                         f"its predictions would be meaningless, so it is not evaluated.")
    if not out.requires_grad or torch.autograd.grad(out.float().sum(), [x], allow_unused=True)[0] is None:
        raise UsageError(f"The model's logits have no gradient path from its input (a constant model, or one that "
                         f"detaches its input): gradient attacks cannot run on it, so it is not evaluated.")


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

    name, label = check_name(name), check_checkpoint(checkpoint)
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
def locked(store, run_id: str, name: str) -> Iterator[None]:
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


@contextlib.contextmanager
def removed_on_failure(store, run_id: str) -> Iterator[None]:
    """A run folder this evaluation creates is removed again when it fails before storing any row (a model a
    guard refuses mid-way): otherwise `bench status` would list it as an interrupted run. Call it under the lock."""
    import shutil

    run_dir = store.run_dir(run_id)
    fresh = not run_dir.exists()
    try:
        yield
    except Exception:
        if fresh and not any(run_dir.glob("evals/*/*.json")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def write_run(store, config: dict[str, Any], label: str, data: bytes) -> None:
    """An external model's run folder: config.json (kept when readable: the first evaluation's provenance) and
    <label>.pt, the state dict evaluated (written again when missing or not these bytes: damaged)."""
    from bench.store import (
        StoreError,
        atomic_path,
        check_config,
        file_sha,
        read_json,
        write_json,
    )

    run_dir = store.run_dir(config["run_id"])
    try:
        check_config(read_json(run_dir / "config.json"), run_dir / "config.json")
    except StoreError:  # missing (a new run) or damaged
        write_json(run_dir / "config.json", config)
    path = run_dir / f"{label}.pt"
    if not path.is_file() or file_sha(path) != config["train"]["weights_sha"]:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


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
