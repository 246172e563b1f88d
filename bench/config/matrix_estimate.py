"""The work estimate of a matrix (`bench run --dry-run`): example-gradient steps, sizes from the dataset's
definition (no files read), and hours from a `bench speed --json` file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config.catalog import DATASETS
from bench.config.matrix_cells import Cell
from bench.config.method_params import attack_steps_per_example
from bench.config.names import UsageError


def grad_steps(cell: Cell, n_train: int, epochs_done: int = 0) -> int:
    """Training work left, in example-gradient steps: epochs left x train size x (attack steps + 1), the +1
    being the weight update. Validation and evaluation are not counted (they are small next to training,
    except AutoAttack on many points)."""
    t = cell.train
    per_example = attack_steps_per_example(t.train_attack, t.attack_steps, t.saa_targets, t.saa_steps)
    return max(t.epochs - epochs_done, 0) * n_train * (per_example + 1)


def cell_sizes(cell: Cell) -> tuple[int, int]:
    """(training points, test points) of a cell, from the dataset's definition: no files are read."""
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
