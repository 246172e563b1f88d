"""The matrix: matrix files (TOML), merging them with command-line flags, and expanding the result into cells.

A matrix file names the grid (methods x training attacks x datasets x models x seeds), the hyper-parameters,
the eval suite and the method parameters, in sections that mirror `bench run`'s flags:

    [matrix]  methods, train_attacks, datasets, models, seeds          (lists; each list expands the matrix)
              or rows = [["at", "pgd"], ["lrat", "saa+cw"]] instead of methods x train_attacks: the listed
              (method, train attack) pairs only, as a paper's table has them
    [train]   epochs, batch_size, lr, lr_scale, precision, weight_decay, eps, attack_steps, step_size,
              train_subset, val_size
    [eval]    attacks, test_subset, batch_size, threat_model, eps, precision, checkpoints
    [method_params.<method>]  name = value, e.g. [method_params.gairat] lam = -1.0

A flag the user actually typed overrides the file; a key missing from both takes the flag's default. Every
check happens here, before anything is written (cells, data presence, results directory), so a typo costs
nothing. This module does not import torch at import time (`bench status` reads cells through it).
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.config import EvalConfig, TrainConfig, parse_checkpoint, parse_eps
from bench.config.names import UsageError, split_list, suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One unit of work: a training config (the run identity) and the eval suite applied to it."""

    train: TrainConfig
    eval: EvalConfig

    @property
    def label(self) -> str:
        t = self.train
        return f"{t.method}/{t.train_attack} {t.dataset}/{t.model} seed {t.seed} [{t.run_id}]"


# --- matrix files -------------------------------------------------------------------------------------------

def _str_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))


def _int_list(v: Any) -> bool:
    return _int(v) or (isinstance(v, list) and all(_int(i) for i in v))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return _int(v) or isinstance(v, float)


def _pair_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(p, list) and len(p) == 2 and _str_list(p) for p in v)


def _eps(v: Any) -> bool:
    return _number(v) or isinstance(v, str)


# section -> key -> (`bench run` parameter, type check, what the check wants)
Check = tuple[str, Callable[[Any], bool], str]
SCHEMA: dict[str, dict[str, Check]] = {
    "matrix": {
        "rows": ("rows", _pair_list, "a list of [\"method\", \"train_attack\"] pairs"),
        "methods": ("methods", _str_list, "a list of names"),
        "train_attacks": ("train_attack", _str_list, "a list of names (saa+cw combines two)"),
        "datasets": ("dataset", _str_list, "a list of names"),
        "models": ("model", _str_list, "a list of names"),
        "seeds": ("seeds", _int_list, "a list of integers"),
    },
    "train": {
        "epochs": ("epochs", _int, "an integer"),
        "batch_size": ("batch_size", _int, "an integer"),
        "lr": ("lr", _number, "a number"),
        "lr_scale": ("lr_scale", lambda v: v in ("none", "linear"), "\"none\" or \"linear\""),
        "precision": ("precision", lambda v: v in ("fp32", "bf16"), "\"fp32\" or \"bf16\""),
        "weight_decay": ("weight_decay", _number, "a number"),
        "eps": ("eps", _eps, "a number or a string such as \"8/255\""),
        "attack_steps": ("attack_steps", _int, "an integer"),
        "step_size": ("step_size", _eps, "a number or a string such as \"2/255\""),
        "train_subset": ("train_subset", _int, "an integer"),
        "val_size": ("val_size", _int, "an integer"),
    },
    "eval": {
        "attacks": ("eval_attacks", _str_list, "a list of names"),
        "test_subset": ("test_subset", _int, "an integer"),
        "batch_size": ("eval_batch_size", _int, "an integer"),
        "threat_model": ("threat_model", lambda v: v in ("linf", "l2"), "\"linf\" or \"l2\""),
        "eps": ("eval_eps", _eps, "a number or a string such as \"8/255\""),
        "precision": ("eval_precision", lambda v: v in ("fp32", "tf32"), "\"fp32\" or \"tf32\""),
        "checkpoints": ("checkpoints", _str_list, "a list of \"best\", \"last\", \"epochN\""),
    },
}
PARAMS_SECTION = "method_params"
# The `bench run` parameters a matrix file can set (plus method_params).
MATRIX_PARAMS = tuple(p for keys in SCHEMA.values() for p, _, _ in keys.values()) + ("method_params",)


def _line_of(text: str, section: str, key: str | None = None) -> int | None:
    """1-based line of `[section]` (key None) or of `key = ...` inside it: tomllib gives no positions."""
    current = ""
    for i, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1).replace('"', "").replace("'", "").replace(" ", "")
            if key is None and current == section:
                return i
            continue
        if key is not None and current == section and re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return i
    return None


def _where(path: Path, text: str, section: str, key: str | None = None) -> str:
    line = _line_of(text, section, key)
    return f"{path}:{line}" if line else str(path)


def load_matrix_file(path: str | Path) -> dict[str, Any]:
    """A matrix file -> {`bench run` parameter: value}; method parameters under 'method_params' as
    {method: {name: value}}. Malformed files raise UsageError naming the file, the line and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"Cannot read matrix file {path}: {exc.strerror or exc}.") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(_syntax_error(path, text, exc)) from None
    values: dict[str, Any] = {}
    sections = [*SCHEMA, PARAMS_SECTION]
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise UsageError(f"{_where(path, text, '', section)}: key '{section}' must sit inside a section "
                             f"({', '.join(f'[{s}]' for s in sections)}).{suggest(section, _all_keys())}")
        if section not in sections:
            raise UsageError(f"{_where(path, text, section)}: unknown section [{section}].{suggest(section, sections)}"
                             f" (sections: {', '.join(sections)})")
        if section == PARAMS_SECTION:
            values["method_params"] = _method_tables(path, text, table)
            continue
        for key, value in table.items():
            if key not in SCHEMA[section]:
                raise UsageError(f"{_where(path, text, section, key)}: unknown key '{key}' in [{section}]."
                                 f"{suggest(key, SCHEMA[section])} (keys: {', '.join(SCHEMA[section])})")
            param, ok, wants = SCHEMA[section][key]
            if not ok(value):
                raise UsageError(f"{_where(path, text, section, key)}: key '{section}.{key}' must be {wants}, "
                                 f"got {value!r}.")
            values[param] = value
    return values


def _syntax_error(path: Path, text: str, exc: Exception) -> str:
    """tomllib says 'line N' (or 'end of document'); add the key being assigned there and the line's text."""
    lines = text.splitlines()
    m = re.search(r"line (\d+)", str(exc))
    line = int(m.group(1)) if m else len(lines) or 1
    key = next((k.group(1) for i in range(min(line, len(lines)) - 1, -1, -1)
                if (k := re.match(r"\s*[\"']?([\w.-]+)[\"']?\s*=", lines[i]))), None)
    where = f" in the value of '{key}'" if key else ""
    quoted = f": {lines[line - 1].strip()!r}" if 0 < line <= len(lines) else ""
    return f"{path}:{line}: malformed TOML{where} ({exc}){quoted}"


def _all_keys() -> list[str]:
    return [k for keys in SCHEMA.values() for k in keys]


def _method_tables(path: Path, text: str, table: dict) -> dict[str, dict[str, Any]]:
    """Check each [method_params.<method>] table against the method's parameters, with the file's line."""
    from methods import METHODS, canonical_method

    out = {}
    for method, params in table.items():
        where = _where(path, text, f"{PARAMS_SECTION}.{method}") if _line_of(text, f"{PARAMS_SECTION}.{method}") \
            else _where(path, text, PARAMS_SECTION, method)
        if not isinstance(params, dict):
            raise UsageError(f"{where}: method_params.{method} must be a table, e.g. [method_params.gairat] "
                             f"with lam = -1.0.")
        try:
            METHODS[canonical_method(method)].make(params)
        except UsageError as exc:
            raise UsageError(f"{where}: [method_params.{method}]: {exc}") from None
        out[method] = dict(params)
    return out


def defaults_of(command) -> dict[str, Any]:
    """The defaults of a click command's matrix parameters (the one place defaults are written down)."""
    return {p.name: p.default for p in command.params if p.name in MATRIX_PARAMS}


def merge(defaults: dict[str, Any], file_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Defaults < matrix file < flags the user actually gave. Method parameters merge per key."""
    merged = {**defaults, **file_values, **flags}
    merged["method_params"] = (file_values.get("method_params") or {}, flags.get("method_params") or ())
    if "rows" in file_values:
        both = [k for k in ("methods", "train_attack") if k in file_values]
        if both:
            raise UsageError(f"The matrix file gives [matrix] rows and {both[0].replace('train_attack', 'train_attacks')}: "
                             f"rows already name each (method, train attack) pair; keep one of the two.")
        for key in ("methods", "train_attack"):  # typed flags select among the rows; defaults do not
            merged[key] = flags.get(key)
    return merged


# --- resolving the matrix into cells ------------------------------------------------------------------------

def _parse_method_params(file_params: dict[str, dict[str, Any]], flag_params: Iterable[str],
                         chosen: list[str]) -> dict[str, dict[str, Any]]:
    """Canonical method -> overrides. File tables for methods outside the matrix are ignored (a file may hold
    parameters for more methods than a command line selects); a flag naming such a method is an error."""
    from methods import canonical_method

    overrides: dict[str, dict[str, Any]] = {}
    for method, params in file_params.items():
        m = canonical_method(method)
        if m in chosen:
            overrides.setdefault(m, {}).update(params)
        else:
            log.info("matrix file: parameters of method '%s' ignored (not in the methods of this run)", m)
    for item in flag_params:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--method-param takes METHOD.NAME=VALUE (e.g. gairat.lam=0), got '{item}'.")
        m = canonical_method(method)
        if m not in chosen:
            raise UsageError(f"--method-param names method '{m}', which is not in --methods.")
        overrides.setdefault(m, {})[param.strip()] = value.strip()
    return overrides


def _positive(values: dict[str, Any], names: Iterable[str]) -> None:
    for name in names:
        v = values.get(name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}.")


def _default_eval_eps(dataset: str, threat_model: str) -> float | None:
    """L-inf: None (the training epsilon, methods.md sec. 3). L2: the evaluation module's usual budget."""
    if threat_model == "linf":
        return None
    try:
        from bench.guards import default_eps
    except ImportError:
        raise UsageError(f"--threat-model {threat_model} needs --eval-eps (no default budget here).") from None
    return float(default_eps(dataset, threat_model))


def resolve(values: dict[str, Any]) -> list[Cell]:
    """Check every name and number of a merged matrix and expand it: one cell per
    (dataset, model, method, train attack, seed), in that order. Raises UsageError; writes nothing."""
    from bench.data import DATASETS
    from bench.eval_attacks import EVAL_ATTACKS
    from bench.models import MODELS
    from bench.config.names import lookup
    from bench.train_attacks import HAS_KAPPA, parse_train_attack
    from methods import METHODS, canonical_method

    _positive(values, ("epochs", "batch_size", "val_size", "attack_steps", "train_subset", "test_subset",
                       "eval_batch_size"))
    for name in ("lr", "weight_decay"):
        if values[name] is None:  # lr: the model's default, below
            continue
        v = float(values[name])
        if not (v >= 0 and v < float("inf")) or (name == "lr" and v == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, "
                             f"got {values[name]}.")
    datasets = [lookup("dataset", d, DATASETS) for d in dict.fromkeys(split_list(values["dataset"]))]
    models = [lookup("model", m, MODELS) and m.strip().lower() for m in dict.fromkeys(split_list(values["model"] or ()))]
    methods = list(dict.fromkeys(canonical_method(m) for m in split_list(values["methods"] or ())))
    attacks = list(dict.fromkeys(parse_train_attack(a) for a in split_list(values["train_attack"] or ())))
    pairs = _pairs(values.get("rows"), methods, attacks)
    methods, attacks = list(dict.fromkeys(m for m, _ in pairs)), list(dict.fromkeys(a for _, a in pairs))
    suite = tuple(dict.fromkeys(lookup("eval attack", a, EVAL_ATTACKS) and a.strip().lower()
                                for a in split_list(values["eval_attacks"])))
    for kind, items in (("--dataset", datasets), ("--methods", methods), ("--train-attack", attacks),
                        ("--eval-attacks", suite)):
        if not items:
            raise UsageError(f"{kind} is empty.")
    try:
        seeds = list(dict.fromkeys(int(s) for s in split_list(values["seeds"] if not isinstance(values["seeds"], int)
                                                              else [values["seeds"]])))
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got '{values['seeds']}'.") from None
    if not seeds:
        raise UsageError("--seeds is empty.")
    file_params, flag_params = values["method_params"]
    overrides = _parse_method_params(file_params, flag_params, methods)
    resolved = {}
    for m in methods:
        method = METHODS[m].make(overrides.get(m))
        for a in (a for pm, a in pairs if pm == m):
            method.check_attacks(tuple(a.split("+")), HAS_KAPPA, values["attack_steps"])
        resolved[m] = _params_dict(method.params)
    threat_model = values["threat_model"]
    checkpoints = tuple(dict.fromkeys(parse_checkpoint(c, values["epochs"]) for c in split_list(values["checkpoints"])))
    if not checkpoints:
        raise UsageError("--checkpoints is empty.")
    cells = []
    for info in datasets:
        eps = parse_eps(values["eps"]) if values["eps"] is not None else (0.1 if info.image_size == 28 else 8 / 255)
        step = parse_eps(values["step_size"]) if values["step_size"] is not None else eps / 4
        eval_eps = (parse_eps(values["eval_eps"], threat_model) if values["eval_eps"] is not None
                    else _default_eval_eps(info.name, threat_model))
        ecfg = EvalConfig(attacks=suite, eps=eval_eps, threat_model=threat_model, test_subset=values["test_subset"],
                          batch_size=values["eval_batch_size"], checkpoints=checkpoints,
                          precision=values["eval_precision"])
        for model in models or ["small-cnn" if info.image_size == 28 else "resnet18"]:
            base = TrainConfig(method="at", train_attack="pgd", dataset=info.name, model=model, eps=eps,
                               attack_steps=values["attack_steps"], attack_step_size=step,
                               train_subset=values["train_subset"], val_size=values["val_size"],
                               epochs=values["epochs"], batch_size=values["batch_size"],
                               lr=learning_rate(values["lr"], model, values["batch_size"], values["lr_scale"]),
                               weight_decay=float(values["weight_decay"]), augment=info.augment,
                               precision=values["precision"])
            cells += expand_pairs(base, [((m, resolved[m]), a) for m, a in pairs], seeds, ecfg)
    return cells


def _pairs(rows: list[list[str]] | None, methods: list[str], attacks: list[str]) -> list[tuple[str, str]]:
    """(method, train attack) pairs: the product of methods and attacks, or a file's rows (which typed
    --methods / --train-attack flags narrow down)."""
    from bench.train_attacks import parse_train_attack
    from methods import canonical_method

    if not rows:
        return list(itertools.product(methods, attacks))
    listed = list(dict.fromkeys((canonical_method(m), parse_train_attack(a)) for m, a in rows))
    kept = [(m, a) for m, a in listed if (not methods or m in methods) and (not attacks or a in attacks)]
    if not kept:
        raise UsageError(f"No row of the matrix file matches --methods/--train-attack (rows: "
                         f"{', '.join(f'{m}-{a}' for m, a in listed)}).")
    return kept


# [choice] SGD learning rate per model when --lr is not given: 0.1 as in the LRAT/GAIRAT ResNet recipes; 0.05 for
# the small CNN, which barely leaves chance level in short runs at 0.1 (measured on Fashion-MNIST: val PGD
# accuracy after 3 epochs on 4,096 images 0.32 at lr 0.1, 0.49 at lr 0.05).
DEFAULT_LR = {"small-cnn": 0.05}
REFERENCE_BATCH = 128  # --lr-scale linear: lr x batch_size / 128 (Goyal et al. 2017)


def learning_rate(lr: float | None, model: str, batch_size: int, scale: str = "none") -> float:
    base = DEFAULT_LR.get(model, 0.1) if lr is None else float(lr)
    return base * batch_size / REFERENCE_BATCH if scale == "linear" else base


def _params_dict(params) -> dict[str, Any]:
    import dataclasses
    return dataclasses.asdict(params)


def expand_pairs(base: TrainConfig, pairs: list[tuple[tuple[str, dict], str]], seeds: list[int],
                 eval_cfg: EvalConfig) -> list[Cell]:
    """One cell per ((method, params), train attack) pair and seed."""
    return [Cell(replace(base, method=m, method_params=p, train_attack=a, seed=s), eval_cfg)
            for ((m, p), a), s in itertools.product(pairs, seeds)]


# --- checks that need the outside world ---------------------------------------------------------------------

def check_results_dir(path: str | Path) -> None:
    """Refuse a results directory that cannot be created or written, without leaving anything behind: probe
    with a temporary file in the deepest existing directory (os.access says yes to root on read-only trees)."""
    p = Path(path).absolute()
    probe = next((q for q in (p, *p.parents) if q.exists()), None)
    if probe is None or not probe.is_dir():
        raise UsageError(f"Results directory '{path}' cannot be created: '{probe}' is not a directory.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bench-write-probe.", dir=probe)
    except OSError as exc:
        raise UsageError(f"Results directory '{path}' is not writable ({exc.strerror or exc} in {probe}).") from None
    os.close(fd)
    os.unlink(tmp)


def data_key(cell: Cell) -> tuple:
    """Cells with equal keys share one loaded DataBundle."""
    t = cell.train
    return (t.dataset, t.val_size, t.train_subset, cell.eval.test_subset)


def load_matrix_data(cells: list[Cell], data_dir: str | None) -> dict[tuple, Any]:
    """Load every dataset the matrix needs (DatasetNotFound, a UsageError, says how to get a missing one)."""
    from bench.data import load_data

    out = {}
    for cell in cells:
        key = data_key(cell)
        if key not in out:
            name, val_size, train_subset, test_subset = key
            out[key] = load_data(name, val_size=val_size, train_subset=train_subset, test_subset=test_subset,
                                 data_dir=data_dir)
    return out


# --- the work estimate --------------------------------------------------------------------------------------

def grad_steps(cell: Cell, n_train: int, epochs_done: int = 0) -> int:
    """Training work left, in example-gradient steps: epochs left x train size x (attack steps + 1), the +1
    being the weight update. Validation and evaluation are not counted (they are small next to training,
    except AutoAttack on many points)."""
    from bench.train_attacks import attack_steps_per_example

    t = cell.train
    return max(t.epochs - epochs_done, 0) * n_train * (attack_steps_per_example(t) + 1)


def cell_sizes(cell: Cell) -> tuple[int, int]:
    """(training points, test points) of a cell, from the dataset's definition: no files are read."""
    from bench.data import DATASETS

    t = cell.train
    return DATASETS[t.dataset].split_sizes(t.val_size, t.train_subset, cell.eval.test_subset)


@dataclass(frozen=True)
class Throughput:
    """Figures from a `bench speed --json` file: images/s per (method, train attack), and the example-gradient
    steps/s of its first `at` row (images/s x (K + 1)) for pairs it did not measure."""

    images_per_s: dict[tuple[str, str], float]
    grad_steps_per_s: float
    settings: dict[str, Any]
    device: str


def load_speed_json(path: str | Path) -> Throughput:
    import json

    try:
        doc = json.loads(Path(path).read_text())
        rows = doc["rows"]
        at = next(r for r in rows if r["method"] == "at")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise UsageError(f"{path} is not a `bench speed --json` file with an 'at' row ({exc}).") from None
    return Throughput({(r["method"], r["train_attack"]): r["images_per_s"] for r in rows},
                      at["images_per_s"] * (at["attack_steps"] + 1), doc.get("settings", {}),
                      doc.get("device", {}).get("device", "unknown device"))


def cell_hours(cell: Cell, n_train: int, epochs_done: int, speed: Throughput | None,
               grad_steps_per_s: float | None) -> float | None:
    """Training hours left for one worker: the cell's own measured images/s when the speed file has its
    (method, train attack), else its gradient steps at the measured (or given) steps/s."""
    t = cell.train
    if speed is not None and (t.method, t.train_attack) in speed.images_per_s:
        return max(t.epochs - epochs_done, 0) * n_train / speed.images_per_s[(t.method, t.train_attack)] / 3600
    return hours(grad_steps(cell, n_train, epochs_done), speed.grad_steps_per_s if speed else grad_steps_per_s)


def hours(steps: int, grad_steps_per_s: float | None) -> float | None:
    """The hook for the speed benchmark: a measured throughput (example-gradient steps per second of one
    worker; PGD-10 AT at R images/s is 11 R) turns the estimate into hours. None when no figure is given."""
    return steps / grad_steps_per_s / 3600 if grad_steps_per_s else None
