"""`bench ls`: every method, training attack, evaluation attack, dataset and model, one line each, and `bench ls
METHOD`: one method's parameters (default, source, valid values) and the training attacks it takes. From the
catalog (bench/config/catalog.py), which the built-in registries read and plugins register into
(bench/plugins.py), so it never imports torch (a plugin whose module imports torch costs that import). `--json`
prints the same entries as one document, whose shape docs/cli.md describes; the text is rendered from that
document, so the two never disagree."""
from __future__ import annotations

import math
from typing import Any

import click

from bench.cli.common import echo_json, json_option, usage_errors
from bench.config import catalog
from bench.config.method_params import canonical_method
from bench.config.names import UsageError
from bench.plugins import source

_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _number(value):
    """JSON has no infinity: a non-finite number as the text '-inf'/'inf', any other value as it is."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def method_json(name: str) -> dict[str, Any]:
    """One method (a canonical name): its catalog entry (label, summary, aliases, attack rules, parameter specs)."""
    entry = catalog.METHODS[name]
    return {
        "name": name, "label": entry.label, "summary": entry.summary, "aliases": list(entry.aliases),
        "max_attacks": entry.max_attacks, "train_attacks": accepted_attacks(name, entry),
        "needs_kappa": entry.needs_kappa, "min_attack_steps": entry.min_attack_steps,
        "min_attack_steps_why": entry.min_attack_steps_why, "source": source("methods", name),
        "parameters": [{"name": name, "type": _TYPES.get(type(p.default), type(p.default).__name__),
                        "default": _number(p.default), "source": p.source, "choices": list(p.choices),
                        "low": _number(p.low), "high": _number(p.high), "allow_inf": p.allow_inf}
                       for name, p in entry.params.items()],
    }


def accepted_attacks(name: str, entry) -> list[str]:
    """The training attacks the method takes (each alone), by the rule `bench run` applies
    (check_method_attacks: its own attacks only, kappa, ...)."""
    from bench.config.method_params import check_method_attacks

    def ok(attack: str) -> bool:
        try:
            check_method_attacks(name, (attack,), None, entry)
        except UsageError:
            return False
        return True

    return [a for a in catalog.TRAIN_ATTACKS if ok(a)]


def registries_json() -> dict[str, Any]:
    """Every catalog entry (built-in and plugin), in its display order (`bench ls --json`)."""
    doc = {
        "methods": [method_json(name) for name in catalog.METHODS],  # aliases: in "aliases"
        "train_attacks": [{"name": k, "label": v.label, "summary": v.summary, "has_kappa": v.has_kappa}
                          for k, v in catalog.TRAIN_ATTACKS.items()],
        "eval_attacks": [{"name": k, "label": v.label, "summary": v.summary, "strength": v.strength,
                          "autoattack": v.autoattack} for k, v in catalog.EVAL_ATTACKS.items()],
        "datasets": [{"name": k, "label": v.label, "summary": v.summary, "num_classes": v.num_classes,
                      "in_channels": v.in_channels, "image_size": v.image_size, "n_train": v.n_train,
                      "n_test": v.n_test, "eps_linf": v.eps_linf, "eps_l2": v.eps_l2, "default_model": v.default_model}
                     for k, v in catalog.DATASETS.items()],
        "models": [{"name": k, "label": v.label, "summary": v.summary, "lr": v.lr} for k, v in catalog.MODELS.items()],
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
    if method is not None:
        try:
            name = canonical_method(method)
        except UsageError:
            _not_a_method(method)
            raise
        entry = method_json(name)
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
    for line in listing_lines(doc):
        click.echo(line)


def listing_lines(doc: dict[str, Any]) -> list[str]:
    """`bench ls`'s text, from registries_json's document: a section per kind, one line per entry."""
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
    lines = []
    for title, entries in sections.items():
        lines.append(f"{title}:")
        lines += [f"  {name:<16} {summary}" for name, summary in entries]
    return lines
