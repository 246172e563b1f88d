"""Method parameters and training attacks checked against the catalog, without importing the methods (torch):
the config stage (`bench run`, `--dry-run`, `bench status --config`) refuses bad values before any work."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from bench.config.catalog import METHOD_ALIASES, METHODS, TRAIN_ATTACKS, MethodEntry, Param
from bench.config.names import UsageError, lookup, suggest


def canonical_method(name: str) -> str:
    """'IRAT ' -> 'gairat'; unknown names get a suggestion."""
    key = name.strip().lower()
    key = METHOD_ALIASES.get(key, key)
    lookup("method", key, {**METHODS, **{a: None for a in METHOD_ALIASES}})
    return key


def coerce_param(key: str, value: Any, spec: Param) -> bool | int | float | str:
    """A flag's string or a TOML value -> the type of the parameter's default, checked against its spec."""
    default = spec.default
    kind = type(default).__name__
    if isinstance(value, (list, dict, tuple)) or value is None:
        raise UsageError(f"Method parameter {key} must be a {kind}, got {value!r}.")
    if isinstance(default, bool):
        text = str(value).strip().lower()
        if text not in ("1", "true", "yes", "0", "false", "no"):
            raise UsageError(f"Method parameter {key} must be true or false, got {value!r}.")
        return text in ("1", "true", "yes")
    if isinstance(default, str):
        text = str(value).strip()
        if spec.choices and text not in spec.choices:
            raise UsageError(f"Method parameter {key} must be one of {', '.join(spec.choices)}, got {value!r}."
                             f"{suggest(text, spec.choices)}")
        return text
    if isinstance(value, bool):
        raise UsageError(f"Method parameter {key} must be a {kind}, got {value!r}.")
    try:
        number = int(value) if isinstance(default, int) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"Method parameter {key}={value!r} is not a {kind}.") from None
    if math.isnan(number) or (math.isinf(number) and not spec.allow_inf):
        raise UsageError(f"Method parameter {key} must be a finite number, got {value!r}.")
    if (spec.low is not None and number < spec.low) or (spec.high is not None and number > spec.high):
        bounds = f"[{spec.low if spec.low is not None else '-inf'}, {spec.high if spec.high is not None else 'inf'}]"
        raise UsageError(f"Method parameter {key} must lie in {bounds}, got {value!r}.")
    return number


def resolve_method_params(method: str, overrides: Mapping[str, Any] | None = None,
                          entry: MethodEntry | None = None) -> dict[str, Any]:
    """Every parameter of `method` (a canonical name): the catalog's defaults, overridden and checked."""
    entry = entry or METHODS[method]
    values = {k: p.default for k, p in entry.params.items()}
    for key, value in (overrides or {}).items():
        if key not in entry.params:
            raise UsageError(f"Unknown parameter '{key}' for method '{method}'.{suggest(key, entry.params)} "
                             f"(parameters: {', '.join(entry.params) or 'none'})")
        values[key] = coerce_param(f"{method}.{key}", value, entry.params[key])
    return values


def params_for_attack(params: Mapping[str, Any], train_attack: str, entry: MethodEntry) -> dict[str, Any]:
    """The parameters a run with `train_attack` gets: one that names a training attack the run does not train
    with (`Param.names_train_attack`, LRAT's `gd_attack`) resets to its default, so that run is the same run."""
    parts = train_attack.split("+")
    return {k: (entry.params[k].default if k in entry.params and entry.params[k].names_train_attack
                and v not in parts else v) for k, v in params.items()}


def check_method_attacks(method: str, attack_names: Iterable[str], attack_steps: int | None = None,
                         entry: MethodEntry | None = None, params: Mapping[str, Any] | None = None) -> None:
    """Refuse training attacks the method cannot take: not among those it accepts, too many combined, no
    kappa, too few steps (also for a `gd_attack` that needs GAIRAT's kappa)."""
    entry = entry or METHODS[method]
    names = tuple(attack_names)
    wrong = [a for a in names if entry.train_attacks and a not in entry.train_attacks]
    if wrong:
        raise UsageError(f"Method '{method}' trains on its own attack{'s' if len(entry.train_attacks) > 1 else ''} "
                         f"{', '.join(entry.train_attacks)}, not '{wrong[0]}': use --train-attack "
                         f"{entry.train_attacks[0]}.")
    if len(names) > entry.max_attacks:
        raise UsageError(f"Method '{method}' takes one training attack; '{'+'.join(names)}' combines "
                         f"{len(names)}. Only lrat/lsat take several (e.g. saa+cw).")
    if entry.needs_kappa:
        lacking = [a for a in names if not (a in TRAIN_ATTACKS and TRAIN_ATTACKS[a].has_kappa)]
        if lacking:
            raise UsageError(f"Method '{method}' needs the attack's step count kappa, which training attack "
                             f"'{lacking[0]}' does not give; use pgd or cw.")
    if attack_steps is not None and attack_steps < entry.min_attack_steps:
        raise UsageError(f"Method '{method}' needs at least {entry.min_attack_steps} attack steps "
                         f"(--attack-steps), got {attack_steps}: {entry.min_attack_steps_why}")
    gd = (params or {}).get("gd_attack", "none")
    if gd != "none" and gd in names and attack_steps is not None and attack_steps < 2:
        raise UsageError(f"Method '{method}' with gd_attack={gd} needs at least 2 attack steps (--attack-steps), "
                         f"got {attack_steps}: GAIRAT's weights divide by floor(K/2).")


def parse_train_attack(value: str) -> str:
    """'saa + CW' -> 'saa+cw', each part checked against the catalog (a '+' combines attacks in one run)."""
    parts = [p.strip().lower() for p in value.split("+")]
    if not all(parts):
        raise UsageError(f"Malformed training attack '{value}': use names joined by '+', e.g. saa+cw.")
    for p in parts:
        lookup("training attack", p, TRAIN_ATTACKS)
    if len(set(parts)) != len(parts):
        raise UsageError(f"Training attack '{value}' names the same attack twice.")
    return "+".join(parts)


def attack_steps_per_example(train_attack: str, attack_steps: int, saa_targets: int, saa_steps: int) -> int:
    """Gradient steps one training example costs in its attacks (for work estimates)."""
    per = {"pgd": attack_steps, "cw": attack_steps, "saa": saa_targets * saa_steps, "fgsm": 1, "kl": attack_steps}
    return sum(per.get(a, attack_steps) for a in train_attack.split("+"))  # a plugin attack: as PGD
