"""`bench ls`: every method, training attack, evaluation attack, dataset and model, one line each, and `bench ls
METHOD`: one method's parameters (default, source, valid values) and the training attacks it takes. From the
registries themselves (so it imports them: torch); the methods' parameter specs are their catalog entries
(bench/config/catalog.py, through `Method.entry()`). `--json` prints the same entries as one document, whose
shape docs/cli.md describes; the text is rendered from that document, so the two never disagree."""
from __future__ import annotations

import math
from typing import Any

import click

from bench.cli.common import echo_json, json_option, usage_errors
from bench.config.names import UsageError, lookup
from bench.plugins import source

_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _number(value):
    """JSON has no infinity: a non-finite number as the text '-inf'/'inf', any other value as it is."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def method_json(cls) -> dict[str, Any]:
    """One method: its catalog entry (label, attack rules, parameter specs), its registry summary and the
    registry's aliases of it."""
    from methods import METHODS

    entry = cls.entry()
    return {
        "name": cls.name, "label": entry.label, "summary": cls.summary,
        "aliases": [k for k, v in METHODS.items() if v is cls and k != cls.name],
        "max_attacks": entry.max_attacks, "train_attacks": accepted_attacks(cls.name, entry),
        "needs_kappa": entry.needs_kappa, "min_attack_steps": entry.min_attack_steps,
        "min_attack_steps_why": entry.min_attack_steps_why, "source": source("methods", cls.name),
        "parameters": [{"name": name, "type": _TYPES.get(type(p.default), type(p.default).__name__),
                        "default": _number(p.default), "source": p.source, "choices": list(p.choices),
                        "low": _number(p.low), "high": _number(p.high), "allow_inf": p.allow_inf}
                       for name, p in entry.params.items()],
    }


def accepted_attacks(name: str, entry) -> list[str]:
    """The training attacks the method takes (each alone), by the rule `bench run` applies
    (check_method_attacks: its own attacks only, kappa, ...)."""
    from bench.attacks.training import TRAIN_ATTACKS
    from bench.config.method_params import check_method_attacks

    def ok(attack: str) -> bool:
        try:
            check_method_attacks(name, (attack,), None, entry)
        except UsageError:
            return False
        return True

    return [a for a in TRAIN_ATTACKS if ok(a)]


def registries_json() -> dict[str, Any]:
    """Every registry, in its display order (`bench ls --json`)."""
    from bench.attacks.training import TRAIN_ATTACKS
    from bench.config.catalog import MODELS as MODEL_ENTRIES
    from bench.data import DATASETS
    from bench.evaluation.attacks import EVAL_ATTACKS
    from methods import METHODS

    doc = {
        "methods": [method_json(cls) for key, cls in METHODS.items() if key == cls.name],  # aliases: in "aliases"
        "train_attacks": [{"name": k, "label": v.entry.label, "summary": v.summary, "has_kappa": v.has_kappa}
                          for k, v in TRAIN_ATTACKS.items()],
        "eval_attacks": [{"name": k, "label": v.entry.label, "summary": v.summary, "strength": v.strength,
                          "autoattack": v.entry.autoattack} for k, v in EVAL_ATTACKS.items()],
        "datasets": [{"name": k, "label": v.label, "summary": v.summary, "num_classes": v.num_classes,
                      "in_channels": v.in_channels, "image_size": v.image_size, "n_train": v.n_train,
                      "n_test": v.n_test, "eps_linf": v.eps_linf, "eps_l2": v.eps_l2, "default_model": v.default_model}
                     for k, v in DATASETS.items()],
        "models": [{"name": k, "label": v.label, "summary": v.summary, "lr": v.lr} for k, v in MODEL_ENTRIES.items()],
    }
    for kind, entries in doc.items():  # 'built-in', or the plugin it came from (bench/plugins.py)
        for e in entries:
            e["source"] = source(kind, e["name"])
    return doc


def valid_values(p: dict[str, Any]) -> str:
    """What a parameter accepts, in words: its choices, bounds, or type."""
    if p["choices"]:
        return "one of " + ", ".join(p["choices"])
    if p["type"] == "boolean":
        return "true or false"
    low, high = p["low"], p["high"]
    text = (f"[{low:g}, {high:g}]" if low is not None and high is not None else f">= {low:g}" if low is not None
            else f"<= {high:g}" if high is not None else f"any {p['type']}")
    return text + (", or +-inf" if p["allow_inf"] else "")


def method_lines(m: dict[str, Any], asked: str | None = None) -> list[str]:
    """`bench ls METHOD`'s text, from method_json's entry."""
    name = m["name"]
    lines = [f"{asked}: alias of {name}", ""] if asked and asked != name else []
    lines.append(f"{name} ({m['label']}): {m['summary']}")
    if m["source"] != "built-in":
        lines.append(f"from {m['source']}")
    combine = (f"; up to {m['max_attacks']} combined with '+' in one run (e.g. saa+cw)" if m["max_attacks"] > 1
               else "; one per run")
    kappa = " (it needs the attack's step count kappa)" if m["needs_kappa"] else ""
    lines.append(f"training attacks: {', '.join(m['train_attacks'])}{kappa}{combine}")
    if m["min_attack_steps"] > 1:
        lines.append(f"  at least {m['min_attack_steps']} attack steps (--attack-steps): {m['min_attack_steps_why']}")
    if m["aliases"]:
        lines.append(f"aliases: {', '.join(m['aliases'])}")
    if not m["parameters"]:
        lines.append("parameters: none")
        return lines
    lines.append(f"parameters (--method-param {name}.NAME=VALUE, or a [method_params.{name}] table in a matrix file):")
    table = [("name", "default", "valid values", "source")] + [
        (p["name"], f"{p['default']:.6g}" if isinstance(p["default"], float) else str(p["default"]).lower()
         if isinstance(p["default"], bool) else str(p["default"]), valid_values(p), p["source"]) for p in m["parameters"]]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines += ["  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3] for row in table]
    return lines


def _complete_method(ctx, param, incomplete: str):
    """Shell completion of METHOD from the catalog (torch-free, so a <Tab> stays instant)."""
    from bench.config.catalog import METHOD_ALIASES, METHODS

    return [n for n in [*METHODS, *METHOD_ALIASES] if n.startswith(incomplete.lower())]


def _not_a_method(name: str) -> None:
    """A UsageError for a name that is some other kind of entry (bench ls describes methods only)."""
    from bench.config.catalog import DATASETS, EVAL_ATTACKS, MODELS, TRAIN_ATTACKS

    key = name.strip().lower()
    for kind, registry in (("training attack", TRAIN_ATTACKS), ("evaluation attack", EVAL_ATTACKS),
                           ("dataset", DATASETS), ("model", MODELS)):
        if key in registry:
            raise UsageError(f"'{name}' is a {kind}, not a method: `bench ls` lists every {kind} with its summary; "
                             f"`bench ls METHOD` describes a method's parameters.")


@click.command(name="ls", short_help="List every method, attack, dataset and model; with METHOD, its parameters.")
@click.argument("method", required=False, shell_complete=_complete_method)
@json_option("the listing")
@usage_errors
def list_components(method: str | None, as_json: bool):
    """List methods, training attacks, evaluation attacks, datasets and models, one line each; with METHOD
    (a method or an alias), that method's parameters: default, valid values and where the default comes from.

    \b
    Example:
      bench ls
      bench ls lrat
      bench ls irat --json
    """
    from methods import METHODS

    if method is not None:
        try:
            cls = lookup("method", method, METHODS)
        except UsageError:
            _not_a_method(method)
            raise
        entry = method_json(cls)
        if as_json:
            echo_json(entry)
            return
        for line in method_lines(entry, method.strip().lower()):
            click.echo(line)
        return
    doc = registries_json()
    if as_json:
        echo_json(doc)
        return
    aliases = [(a, m["name"]) for m in doc["methods"] for a in m["aliases"]]
    def shown(e: dict) -> tuple[str, str]:
        return e["name"], e["summary"] + ("" if e["source"] == "built-in" else f"  [{e['source']}]")

    sections = {
        "methods": [shown(m) for m in doc["methods"]] + [(a, f"alias of {n}") for a, n in aliases],
        "training attacks": [shown(e) for e in doc["train_attacks"]],
        "evaluation attacks": [shown(e) for e in doc["eval_attacks"]],
        "datasets": [shown(e) for e in doc["datasets"]],
        "models": [shown(e) for e in doc["models"]],
    }
    for title, entries in sections.items():
        click.echo(f"{title}:")
        for name, summary in entries:
            click.echo(f"  {name:<16} {summary}")
