"""The one training loop: SGD with momentum, piecewise-constant LR, a method's loss per batch.

The training attack runs with the model in `attack_bn_mode` (eval by default) and the loss in train mode
(methods/base.py: run_attack). After every epoch: validation natural and PGD accuracy on the validation split,
the best checkpoint (by validation PGD accuracy) and a full training state for resume, all written atomically.
"""
from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.attacks.pgd import PGD
from bench.config import TrainConfig
from bench.data import DataBundle, Split, augment_batch, to_float
from bench.health import nonfinite_reason, training_health
from bench.models import build_model
from bench.store import StoreError, atomic_path, load_torch, write_json
from bench.attacks.training import TRAIN_ATTACKS, build_train_attacks
from bench.training.outputs import LogitsWatch, check_logit_shape, check_step_output
from methods import StepContext, build_method

SYNC_EVERY = 25  # GPU: batches between reads of the loss (NaN check, progress)
LOW_WEIGHT = 0.2  # the LRAT paper's Fig. 1a threshold
HIST_EDGES = [round(0.2 * i, 1) for i in range(21)]  # raw weights (w_hist): 0.0 .. 4.0, plus an overflow bin
REL_HIST_EDGES = [round(0.1 * i, 1) for i in range(31)]  # relative (rw_hist): 0.0 .. 3.0, plus an overflow bin


class NonFiniteLoss(RuntimeError):
    """The loss went NaN or infinite. `health`: the `nonfinite_loss` flag, which the runner writes into the
    FAILED marker (the epoch never reaches the history)."""

    def __init__(self, message: str, health: dict[str, str] | None = None):
        super().__init__(message)  # one positional argument: the exception pickles across worker processes
        self.health = health or {}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run, not what to compute: excluded from the run identity, recorded in the history."""

    channels_last: bool = False  # NHWC activations: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the model (opt-in: slower on CPUs, faster on GPUs)
    keep_epochs: tuple[int, ...] = ()  # also save the model after these epochs, as epoch<N>.pt


@dataclass
class Callbacks:
    on_batch: Callable[[int, int, int, float], None] | None = None  # epoch, batch, n_batches, loss
    on_epoch: Callable[[dict[str, Any]], None] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def tune_for(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for the fixed training shapes (the first batches pay)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def milestones(cfg: TrainConfig) -> list[int]:
    return [round(f * cfg.epochs) for f in cfg.lr_milestones]


def weight_stats(weights: list[torch.Tensor], prefix: str = "w", edges: list[float] = HIST_EDGES) -> dict[str, Any]:
    """An epoch's weights as <prefix>_mean, _std, _min, _max, _frac_below_0.2 and _hist (counts: bin i holds
    [edges[i], edges[i+1]), the last bin everything >= edges[-1]); {} when there are none (plain AT, burn-in).
    prefix "w": the raw quantity each method applies; "rw": relative weights (StepOutput.relative_weights)."""
    if not weights:
        return {}
    w = torch.cat(weights).double().cpu()
    bins = torch.bucketize(w, torch.tensor(edges[1:], dtype=torch.float64), right=True)
    counts = torch.bincount(bins, minlength=len(edges))
    return {f"{prefix}_mean": w.mean().item(), f"{prefix}_std": w.std(unbiased=False).item(),
            f"{prefix}_min": w.min().item(), f"{prefix}_max": w.max().item(),
            f"{prefix}_frac_below_{LOW_WEIGHT}": (w < LOW_WEIGHT).double().mean().item(),
            f"{prefix}_hist": counts.long().tolist()}


@torch.no_grad()
def accuracy_flags(model: torch.nn.Module, split: Split, device: torch.device, attack=None,
                   batch_size: int = 512) -> torch.Tensor:
    """Per-example correctness on `split`, on the clean input or on `attack`'s output (model in eval mode)."""
    model.eval()
    out = []
    for i in range(0, len(split), batch_size):
        x = to_float(split.x[i:i + batch_size].to(device))
        y = split.y[i:i + batch_size].to(device)
        if attack is not None:
            x = attack(model, x, y).x_adv
        out.append((model(x).argmax(1) == y).cpu())
    return torch.cat(out)


def _rng_state() -> dict[str, Any]:
    """Every RNG stream as tensors and plain lists: train_state.pt then loads with weights_only=True."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(),
             "python": [version, list(internal), gauss],
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    if isinstance(npst, dict):
        np.random.set_state({"bit_generator": npst["bit_generator"], "has_gauss": npst["has_gauss"],
                             "gauss": npst["gauss"], "state": {"key": npst["key"].numpy().astype(np.uint32),
                                                               "pos": npst["pos"]}})
    else:  # a train state written before the plain format: numpy's legacy tuple
        np.random.set_state(npst)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _legacy_state_globals() -> list:
    """The numpy globals of train states written before RNG states were plain (resumed as they are)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_train_state(path: Path) -> dict[str, Any]:
    """train_state.pt, loaded with weights_only=True; StoreError (naming the file) if it is damaged, refused,
    or lacks what a resume needs."""
    with torch.serialization.safe_globals(_legacy_state_globals()):
        state = load_torch(path)
    keys = ("model", "optimizer", "scheduler", "rng", "epoch", "history", "best")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise StoreError(path, "not a training state (model, optimizer, scheduler, rng, epoch, history, best)")
    return state


def save_torch(obj: Any, path: Path) -> None:
    """torch.save, atomically. Serialised in memory first: the archive is then named "archive", not after the
    random temporary file, so equal tensors give byte-equal files (and equal `checkpoint_sha` in eval rows)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


@dataclass
class _Training:
    """What one cell's training holds: the model (and its compiled twin), the optimiser and schedule, the
    method, the training attacks and the validation attack."""

    model: torch.nn.Module
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    method: Any
    attacks: tuple
    val_attack: PGD
    memory_format: torch.memory_format


def _build(cfg: TrainConfig, data: DataBundle, device: torch.device, runtime: RuntimeOptions) -> _Training:
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    seed_everything(cfg.seed)
    tune_for(device)
    info = data.info
    model = build_model(cfg.model, info.num_classes, info.in_channels, info.image_size).to(device)
    model = model.to(memory_format=memory_format)
    step_model = torch.compile(model) if runtime.compile else model  # shares parameters with `model`
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(cfg), gamma=cfg.lr_gamma)
    return _Training(model, step_model, optimizer, scheduler, build_method(cfg.method, cfg.method_params),
                     build_train_attacks(cfg), PGD(cfg.eps, steps=10, step_size=cfg.eps / 4), memory_format)


def _resume(t: _Training, run_dir: Path) -> tuple[int, list[dict[str, Any]], float]:
    """(first epoch to train, history, best validation PGD accuracy) from train_state.pt, or a fresh start."""
    state_path = run_dir / "train_state.pt"
    if not state_path.exists():
        return 0, [], -1.0
    # On the CPU: RNG states must be CPU tensors; load_state_dict moves weights and buffers to the device.
    state = load_train_state(state_path)
    try:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise StoreError(state_path, f"does not fit this run ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:200]})") from None
    write_json(run_dir / "history.json", state["history"])  # the state's history is the truth (repairs history.json)
    return state["epoch"], state["history"], state["best"]


def _train_epoch(cfg: TrainConfig, t: _Training, train_x, train_y, ctx: StepContext, cb: Callbacks,
                 device: torch.device) -> dict[str, Any]:
    """One pass over the shuffled training set: the summed loss, the weights applied, the methods' stats."""
    n = len(train_y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + ctx.epoch)).to(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    t.model.train()
    watch = LogitsWatch(t.model, loss_sum) if t.step_model is t.model else None  # not on a compiled model
    try:
        return _batches(cfg, t, train_x, train_y, ctx, cb, device, order, loss_sum, watch)
    finally:
        if watch is not None:
            watch.close()


def _batches(cfg: TrainConfig, t: _Training, train_x, train_y, ctx: StepContext, cb: Callbacks, device, order,
             loss_sum: torch.Tensor, watch: LogitsWatch | None) -> dict[str, Any]:
    """The batches of one epoch (_train_epoch); `watch` tells a non-finite loss from non-finite logits."""
    n = len(train_y)
    n_batches = math.ceil(n / cfg.batch_size)
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY
    weights, shown_loss = [], float("nan")
    relative: list[torch.Tensor] = []
    stat_sums: dict[str, torch.Tensor] = {}
    for b in range(n_batches):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        x, y = to_float(train_x[idx]), train_y[idx]
        if cfg.augment:
            x = augment_batch(x)
        x = x.contiguous(memory_format=t.memory_format)
        with autocast(device, cfg.precision):
            out = check_step_output(t.method.loss(t.step_model, x, y, ctx), cfg.method)
        t.optimizer.zero_grad(set_to_none=True)
        loss = out.backward()
        t.optimizer.step()
        # Summed on the device: reading a loss back stalls a GPU, so it is read once per SYNC_EVERY batches.
        loss_sum += loss.double() * len(y)
        if out.weights is not None:
            weights.append(out.weights.float())
        if out.relative_weights is not None:
            relative.append(out.relative_weights.float())
        for key, value in out.stats.items():
            stat_sums[key] = stat_sums.get(key, 0.0) + value.detach().double() * len(y)
        if (b + 1) % sync_every == 0 or b + 1 == n_batches:
            if not torch.isfinite(loss_sum):
                value = loss_sum.item() if math.isfinite(loss.item()) else loss.item()
                why = (": the model's logits went non-finite (NaN or infinite) first"
                       if watch is not None and watch.nonfinite() else "")
                raise NonFiniteLoss(f"loss is {value} at epoch {ctx.epoch + 1}, batch {b + 1}{why}",
                                    {"nonfinite_loss": nonfinite_reason(value, ctx.epoch + 1, b + 1)})
            shown_loss = loss.item()
        if cb.on_batch:
            cb.on_batch(ctx.epoch, b, n_batches, shown_loss)
    return {"train_loss": loss_sum.item() / n, "reweighting": bool(weights), **weight_stats(weights),
            **weight_stats(relative, "rw", REL_HIST_EDGES), **{k: v.item() / n for k, v in stat_sums.items()}}


def train_run(cfg: TrainConfig, data: DataBundle, run_dir: Path, device: torch.device,
              callbacks: Callbacks | None = None, runtime: RuntimeOptions = RuntimeOptions()) -> list[dict[str, Any]]:
    """Train (or resume) one cell; returns the per-epoch history. Raises NonFiniteLoss on NaN/inf."""
    cb = callbacks or Callbacks()
    t = _build(cfg, data, device, runtime)
    info = data.info  # the logits' shape once, before any step (a 13-logit model for 10 classes is refused)
    check_logit_shape(t.model, to_float(data.train.x[:2]).to(device), info.num_classes, cfg.model, info.name)
    start_epoch, history, best = _resume(t, run_dir)
    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        ctx = StepContext(attacks=t.attacks, attack_names=cfg.attack_names, epoch=epoch, epochs=cfg.epochs,
                          bn_mode=cfg.attack_bn_mode, make_attack=lambda name: TRAIN_ATTACKS[name].build(cfg))
        trained = _train_epoch(cfg, t, train_x, train_y, ctx, cb, device)
        lr = t.optimizer.param_groups[0]["lr"]
        t.scheduler.step()
        train_s = time.perf_counter() - t0
        val_nat = accuracy_flags(t.model, data.val, device).float().mean().item()
        val_pgd = accuracy_flags(t.model, data.val, device, t.val_attack).float().mean().item()
        entry = {"epoch": epoch + 1, "lr": lr, "train_loss": trained.pop("train_loss"), "val_natural": val_nat,
                 "val_pgd": val_pgd, "train_seconds": train_s, "seconds": time.perf_counter() - t0,
                 "reweighting": trained.pop("reweighting"), "channels_last": runtime.channels_last,
                 "compile": runtime.compile, **trained}
        history.append(entry)
        entry["health"] = training_health(history, data.info.num_classes, cfg.epochs)  # the flags so far
        if val_pgd > best:
            best = val_pgd
            entry["best"] = True
            save_torch(t.model.state_dict(), run_dir / "best.pt")
        if epoch + 1 in runtime.keep_epochs:
            save_torch(t.model.state_dict(), run_dir / f"epoch{epoch + 1}.pt")
        save_torch({"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                    "scheduler": t.scheduler.state_dict(), "rng": _rng_state(), "epoch": epoch + 1,
                    "history": history, "best": best}, run_dir / "train_state.pt")
        write_json(run_dir / "history.json", history)
        if cb.on_epoch:
            cb.on_epoch(entry)
    save_torch(t.model.state_dict(), run_dir / "last.pt")
    if not (run_dir / "best.pt").exists():  # zero epochs: best is the initial model
        save_torch(t.model.state_dict(), run_dir / "best.pt")
    return history
