"""`bench ls`: every method, training attack, evaluation attack, dataset and model, one line each (from the
registries themselves, so it imports them: torch)."""
from __future__ import annotations

import click


@click.command(name="ls")
def list_components():
    """List methods, training attacks, evaluation attacks, datasets and models, one line each.

    \b
    Example:
      bench ls
    """
    from bench.data import DATASETS
    from bench.evaluation.attacks import EVAL_ATTACKS
    from bench.config.catalog import MODELS as MODEL_ENTRIES
    from bench.attacks.training import TRAIN_ATTACKS
    from methods import METHODS

    sections = {
        "methods": {k: (v.summary if k == v.name else f"alias of {v.name}") for k, v in METHODS.items()},
        "training attacks": {k: v.summary for k, v in TRAIN_ATTACKS.items()},
        "evaluation attacks": {k: v.summary for k, v in EVAL_ATTACKS.items()},
        "datasets": {k: v.summary for k, v in DATASETS.items()},
        "models": {k: v.summary for k, v in MODEL_ENTRIES.items()},
    }
    for title, entries in sections.items():
        click.echo(f"{title}:")
        for name, summary in entries.items():
            click.echo(f"  {name:<16} {summary}")
