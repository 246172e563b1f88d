"""Training health: flags for a run whose training went wrong although it finished (issue 23, item 2).

- `val_at_chance`: validation natural accuracy (`val_natural`) <= 1/K + 0.02 at any epoch after the first;
- `loss_stuck`: training loss (`train_loss`) >= 0.97 ln K at any epoch that starts after the first 20% of the
  run, i.e. epoch e (1-based) of E with e - 1 >= 0.2 E (whole epochs past the mark; never the first epoch);
- `nonfinite_loss`: a training loss that is NaN or infinite (the loop stops such a run: its FAILED marker
  carries the flag, see `nonfinite_reason`).

A flag names the first epoch it holds at and how many more do. Torch-free: `bench status` and `bench report`
read it from the stored history (K from the catalog).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from bench.config.catalog import DATASETS

# The rules. Comparisons allow TOLERANCE so a value equal to a threshold, however it was computed,
# counts as reaching it (0.1 + 0.02 is 0.12000000000000001 in floating point).
CHANCE_MARGIN = 0.02  # val_at_chance: accuracy <= 1/K + 0.02
STUCK_LOSS_FRACTION = 0.97  # loss_stuck: loss >= 0.97 ln K (ln K: the loss of a uniform prediction)
STUCK_AFTER = Fraction(1, 5)  # loss_stuck: only epochs starting after the first 20% of the run (exact arithmetic)
TOLERANCE = 1e-9
FLAGS = ("val_at_chance", "loss_stuck", "nonfinite_loss")


def _epoch(entry: Mapping[str, Any], index: int) -> int:
    epoch = entry.get("epoch")
    return epoch if isinstance(epoch, int) else index + 1


def _number(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _first(hits: list[tuple[int, float]], text: str) -> str:
    """`text` formatted with the first hit's value and epoch, and how many later epochs also hit."""
    epoch, value = hits[0]
    more = f" (and {len(hits) - 1} later epoch{'s' if len(hits) > 2 else ''})" if len(hits) > 1 else ""
    return text.format(value=value, epoch=epoch) + more


def nonfinite_reason(value: Any, epoch: int, batch: int | None = None) -> str:
    """The `nonfinite_loss` reason, for a history entry or for the loop's NonFiniteLoss (with its batch)."""
    return f"train loss {value} at epoch {epoch}" + (f", batch {batch}" if batch is not None else "")


def training_health(history: Sequence[Mapping[str, Any]], num_classes: int, epochs: int) -> dict[str, str]:
    """{flag: one-line reason} of the flags `history` raises (module docstring); {} for a healthy run.
    `epochs`: the run's configured number of epochs (the 20% mark is of the whole run, not of the history)."""
    chance = 1 / num_classes + CHANCE_MARGIN
    stuck = STUCK_LOSS_FRACTION * math.log(num_classes)
    at_chance, stuck_at, nonfinite = [], [], []
    for i, entry in enumerate(history):
        epoch, acc, loss = _epoch(entry, i), _number(entry, "val_natural"), _number(entry, "train_loss")
        if acc is not None and epoch > 1 and acc <= chance + TOLERANCE:
            at_chance.append((epoch, acc))
        if loss is not None and not math.isfinite(loss):
            nonfinite.append((epoch, loss))
        elif loss is not None and epoch - 1 >= STUCK_AFTER * epochs and loss >= stuck - TOLERANCE:
            stuck_at.append((epoch, loss))
    out = {}
    if at_chance:
        out["val_at_chance"] = _first(at_chance, "val accuracy {value:.3f} at epoch {epoch} <= chance "
                                                 f"{1 / num_classes:.3f} + {CHANCE_MARGIN}")
    if stuck_at:
        out["loss_stuck"] = _first(stuck_at, f"train loss {{value:.3f}} at epoch {{epoch}} of {epochs} >= "
                                             f"{STUCK_LOSS_FRACTION} ln {num_classes} = {stuck:.3f}")
    if nonfinite:
        out["nonfinite_loss"] = nonfinite_reason(nonfinite[0][1], nonfinite[0][0])
    return out


def run_health(history: Sequence[Mapping[str, Any]], dataset: str | None, epochs: int | None) -> dict[str, str]:
    """A stored run's flags: computed from its history when the catalog knows its dataset (older histories
    included), else the flags the training loop recorded in its last entry (a plugin dataset not installed)."""
    entry = DATASETS.get(dataset) if isinstance(dataset, str) else None
    if entry is not None and isinstance(epochs, int):
        return training_health(history, entry.num_classes, epochs)
    stored = history[-1].get("health") if history else None
    return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


def health_text(flags: Mapping[str, str]) -> str:
    """'health: val_at_chance: <reason>; loss_stuck: <reason>' for `bench status`; '' when healthy."""
    return "health: " + "; ".join(f"{k}: {v}" for k, v in flags.items()) if flags else ""
