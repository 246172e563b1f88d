"""Matrix files (TOML): their schema, and reading one into `bench run` parameters with file:line errors.

A matrix file names the grid (methods x training attacks x datasets x models x seeds), the hyper-parameters,
the eval suite and the method parameters, in sections that mirror `bench run`'s flags:

    [matrix]  methods, train_attacks, datasets, models, seeds          (lists; each list expands the matrix)
              or rows = [["at", "pgd"], ["lrat", "saa+cw"]] instead of methods x train_attacks: the listed
              (method, train attack) pairs only, as a paper's table has them
    [train]   epochs, batch_size, lr, lr_scale, precision, weight_decay, eps, attack_steps, saa_steps, step_size,
              train_subset, val_size
    [eval]    attacks, test_subset, batch_size, threat_model, eps, precision, checkpoints
    [method_params.<method>]  name = value, e.g. [method_params.gairat] lam = -1.0
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config.method_params import canonical_method, resolve_method_params
from bench.config.names import UsageError, suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib


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
        "saa_steps": ("saa_steps", _int, "an integer"),
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


class MatrixValues(dict):
    """{`bench run` parameter: value} read from a matrix file, with `where`: {parameter: "file:line: key
    'section.key'"}, so that checks made later (against the catalog, per dataset) name the file's line.
    Merged with the flags (matrix_merge.merge), `given` also holds the parameters the user set (not defaults)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.where: dict[str, str] = {}
        self.given: set[str] = set()


def _read_text(path: Path) -> str:
    """The file as text; a file that is not UTF-8 (TOML must be) is refused with the line of the first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"Cannot read matrix file {path}: {exc.strerror or exc}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): a "
                         f"matrix file is TOML, which must be UTF-8.") from None


def load_matrix_file(path: str | Path) -> MatrixValues:
    """A matrix file -> {`bench run` parameter: value}; method parameters under 'method_params' as
    {method: {name: value}}. Malformed files raise UsageError naming the file, the line and the key."""
    path = Path(path)
    text = _read_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(_syntax_error(path, text, exc)) from None
    except RecursionError:  # tomllib recurses once per nesting level: [[[[...]]]] thousands deep
        raise UsageError(f"{path}: nested too deeply to read (arrays or tables inside one another thousands of "
                         f"levels deep); a matrix file needs at most two levels ([matrix] rows).") from None
    values = MatrixValues()
    sections = [*SCHEMA, PARAMS_SECTION]
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise UsageError(f"{_where(path, text, '', section)}: key '{section}' must sit inside a section "
                             f"({', '.join(f'[{s}]' for s in sections)}).{_home_of(section)}")
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
            values.where[param] = f"{_where(path, text, section, key)}: key '{section}.{key}'"
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


def _home_of(key: str) -> str:
    """The section a top-level key belongs in ('methods' -> ' It belongs in [matrix]: put it under that
    header.'), or that of the closest key; '' when none is close."""
    home = next((section for section, keys in SCHEMA.items() if key in keys), None)
    if home is not None:
        return f" It belongs in [{home}]: put it under that header."
    close = suggest(key, _all_keys()).removeprefix(" Did you mean: ").removesuffix("?")
    section = next((sec for sec, keys in SCHEMA.items() if close in keys), None)
    return f" Did you mean: {close} (in [{section}])?" if close and section else ""


def _method_tables(path: Path, text: str, table: dict) -> dict[str, dict[str, Any]]:
    """Check each [method_params.<method>] table against the method's parameters, with the file's line."""
    out = {}
    for method, params in table.items():
        where = _where(path, text, f"{PARAMS_SECTION}.{method}") if _line_of(text, f"{PARAMS_SECTION}.{method}") \
            else _where(path, text, PARAMS_SECTION, method)
        if not isinstance(params, dict):
            raise UsageError(f"{where}: method_params.{method} must be a table, e.g. [method_params.gairat] "
                             f"with lam = -1.0.")
        try:
            resolve_method_params(canonical_method(method), params)
        except UsageError as exc:
            raise UsageError(f"{where}: [method_params.{method}]: {exc}") from None
        out[method] = dict(params)
    return out
