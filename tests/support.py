"""Helpers several test files share that are not fixtures: tiny models, the small evaluation run, a step
context. Test files import them from here (never from one another); fixtures live in conftest.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from click.testing import CliRunner

from bench.attacks.training import TRAIN_ATTACKS, build_train_attacks
from bench.cli import main
from bench.config import EvalConfig, TrainConfig
from bench.execution.status import ATTEMPTS
from bench.store import DONE, TRAINED, Store, write_json
from methods import StepContext


class TinyNet(nn.Module):
    """Conv + BatchNorm + dropout: enough to expose train/eval-mode mistakes, fast on a CPU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(self.drop(h.flatten(1)))


class Fragile(nn.Module):
    """Scripted: correct exactly at its reference points, wrong after any perturbation of L1 size > 1e-6/20.

    The margin of the true class is 1e-6 - 20 |x - x_i|_1 + g.(x - x_i) for the nearest reference x_i, with a
    fixed |g| < 20 so that the input gradient is never zero (FGSM without a random start can move)."""

    def __init__(self, x_ref: torch.Tensor, y_ref: torch.Tensor, num_classes: int = 10):
        super().__init__()
        self.register_buffer("x_ref", x_ref.flatten(1).clone())
        self.register_buffer("y_ref", y_ref.clone())
        self.register_buffer("g", torch.linspace(-1, 1, x_ref[0].numel()))
        self.k = num_classes

    def forward(self, x):
        flat = x.flatten(1)
        i = torch.cdist(flat.detach(), self.x_ref, p=1).argmin(1)
        delta = flat - self.x_ref[i]
        margin = 1e-6 - 20 * delta.abs().sum(1) + delta @ self.g
        others = -0.01 * torch.arange(self.k, dtype=x.dtype, device=x.device).expand(len(x), self.k)
        return others.scatter(1, self.y_ref[i][:, None], margin[:, None])


def context(train_attack="pgd", epoch=0, epochs=1, steps=3, bn_mode="eval"):
    cfg = TrainConfig(method="at", train_attack=train_attack, eps=0.1, attack_steps=steps,
                      attack_step_size=0.025, saa_steps=3)
    return StepContext(attacks=build_train_attacks(cfg), attack_names=cfg.attack_names, epoch=epoch,
                       epochs=epochs, bn_mode=bn_mode, make_attack=lambda n: TRAIN_ATTACKS[n].build(cfg))


# ---- a small evaluated run (tests/test_evaluate.py, tests/test_export.py) ----

CFG = TrainConfig(method="at", train_attack="pgd", dataset="synthetic", model="small-cnn", eps=0.1, val_size=64,
                  train_subset=512, epochs=1)
N = 48


def suite(*attacks, eps=0.02, **kw) -> EvalConfig:
    return EvalConfig(attacks=attacks, eps=eps, test_subset=N, checkpoints=("best",), **kw)


def write_run(root, state, cfg: TrainConfig = CFG) -> tuple[Store, str]:
    """A finished run in a fresh store, as `bench run` leaves it (config, history, checkpoints, markers)."""
    store = Store(root)
    run_dir = store.run_dir(cfg.run_id)
    write_json(run_dir / "config.json", {"run_id": cfg.run_id, "train": cfg.to_dict(), "provenance": {}})
    write_json(run_dir / "history.json", [{"epoch": 1, "val_natural": 1.0, "val_pgd": 0.5, "best": True}])
    for ckpt in ("best", "last"):
        torch.save(state, run_dir / f"{ckpt}.pt")
    store.mark(cfg.run_id, TRAINED)
    store.mark(cfg.run_id, DONE)
    return store, cfg.run_id


# ---- real `bench` processes and store snapshots (tests/test_fault_injection.py, test_checkpoint_identity.py) ----

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# What differs between two runs of the same cell by design: when, how long, which commit (other work may land).
VOLATILE = {"seconds", "train_seconds", "eval_seconds", "created_at", "started_at", "git_commit"}

# The subprocess cell: its kills are timed from the uninterrupted run's own epoch and attack times.
KILLED = ["run", "--dataset", "synthetic", "--methods", "at", "--seeds", "0", "--epochs", "3", "--train-subset", "128",
          "--val-size", "32", "--test-subset", "64", "--batch-size", "32", "--attack-steps", "2",
          "--eval-attacks", "natural,pgd20,cw20", "--checkpoints", "best,epoch1", "--device", "cpu"]
# The in-process cells: two seeds; on this data best.pt moves from epoch 1 to epoch 2 (the identity test needs it).
SMALL = ["run", "--dataset", "synthetic", "--methods", "at", "--epochs", "2", "--train-subset", "128",
         "--val-size", "64", "--test-subset", "32", "--batch-size", "8", "--attack-steps", "2", "--eps", "0.02",
         "--lr", "0.1", "--eval-attacks", "natural,pgd20", "--checkpoints", "best,epoch1", "--device", "cpu",
         "--model", "small-cnn"]  # its best.pt moves in epoch 2 here (tests of checkpoint identity need that)
SEEDS = ["--seeds", "0,1"]


# ---- helpers ------------------------------------------------------------------------------------------------

def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.cpu().contiguous().numpy().tobytes())
    return value


def snapshot(run_dir: Path) -> dict[str, object]:
    """Every stored file of a run, comparable across runs: JSON without VOLATILE keys (markers too), torch
    files as their tensors and values (weights_only=True). attempts.json and set-aside files are left out."""
    out = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if path.name == ATTEMPTS or path.suffix in (".damaged", ".stale"):
            continue
        if path.suffix == ".pt":
            out[rel] = _strip(torch.load(path, map_location="cpu", weights_only=True))
        else:
            out[rel] = _strip(json.loads(path.read_text()))
    return out


def bench(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def appears(root: Path, pattern: str):
    return lambda: bool(list(root.glob(pattern)))


def epochs_stored(root: Path, n: int):
    def ready() -> bool:
        try:
            return any(len(json.loads(p.read_text())) >= n for p in root.glob("runs/*/history.json"))
        except ValueError:  # never: history.json is replaced atomically
            raise AssertionError("a reader saw a half-written history.json") from None
    return ready


def kill_when(proc: subprocess.Popen, ready, delay: float, what: str, timeout: float = 120) -> None:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds; it must die by the signal (not finish)."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < end, f"{what} never happened"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {what} + {delay:.2f}s: {err[-2000:]}"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def only_run(store: Store, seed: int = 0) -> str:
    return next(r for r in store.run_ids() if store.config(r)["train"]["seed"] == seed)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under `root` (root itself included, as "."), by relative path."""
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


# ---- refusals write nothing (tests/test_cli_run.py, tests/test_validation.py) ----

BASE = ["run", "--dataset", "synthetic", "--epochs", "1", "--train-subset", "64", "--val-size", "32",
        "--test-subset", "32", "--eval-attacks", "natural"]


def tree(root: Path) -> set[str]:
    """Every path under `root`: equal before and after a refused command means it wrote nothing."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def cifar_stand_in(n_train: int, n_test: int):
    """torchvision's CIFAR10 with its own __getitem__ and __len__, holding seeded random pixels instead of files
    (no download): monkeypatch it over torchvision.datasets.CIFAR10."""
    import torchvision

    class StandIn(torchvision.datasets.CIFAR10):
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            gen = torch.Generator().manual_seed(0 if train else 1)
            n = n_train if train else n_test
            self.root, self.train, self.transform, self.target_transform = root, train, transform, target_transform
            self.data = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
            self.targets = torch.randint(0, 10, (n,), generator=gen).tolist()

    return StandIn
