"""`bench speed`: throughput of plain and adversarial training, in one process, on whatever device is here.

  P  plain training images/s (forward + backward + step on clean batches)
  A  adversarial training images/s, per method x training attack
  R = P / A, and the efficiency E = ((2K + 3) / 3) / R, where K is the attack's gradient steps per image:
     an attack step costs about 2 forward passes (input gradient only) and the update 3, so PGD-K AT ideally
     costs (2K + 3) / 3 plain steps; E = 1 means no overhead beyond that.
  O = A_at / A_method at the same attack (the reweighting overhead)
  evaluation points/s for pgd20 and aa, peak memory, and the share of an epoch spent outside the training
  steps (data, validation, checkpointing), measured on a real `train_run` epoch.
Synthetic inputs of the dataset's shape live on the device, so the figures are the loop's, not the disk's.
"""
from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import TrainConfig
from bench.data import DATASETS, DataBundle, Split
from bench.evaluation.attacks import run_eval_attack
from bench.models import build_model
from bench.config.names import UsageError
from bench.provenance import provenance
from bench.training.loop import RuntimeOptions, autocast, train_run, tune_for
from bench.attacks.training import TRAIN_ATTACKS, attack_steps_per_example, build_train_attacks
from methods import StepContext, StepOutput, build_method_reweighting_now


@dataclass(frozen=True)
class SpeedSettings:
    model: str = "small-cnn"
    dataset: str = "fashion-mnist"
    batch_size: int = 128
    steps: int = 5  # timed iterations per measurement
    warmup: int = 2
    methods: tuple[str, ...] = ("at", "gairat", "mail", "lrat")
    train_attacks: tuple[str, ...] = ("pgd",)
    eps: float = 0.1
    precision: str = "fp32"
    eval_points: int = 64
    eval_attacks: tuple[str, ...] = ("pgd20", "aa")
    epoch_images: int = 1024  # images in the measured train_run epoch
    channels_last: bool = False
    compile: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call, after warm-up calls (which also absorb torch.compile or cudnn autotuning)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _synthetic_batch(s: SpeedSettings, device: torch.device, n: int):
    info = DATASETS[s.dataset]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, info.in_channels, info.image_size, info.image_size, generator=g).to(device)
    return x, torch.randint(0, info.num_classes, (n,), generator=g).to(device)


def _train_step(optimizer, loss_fn):
    """The training loop's step (bench/training/loop.py): loss_fn returns a StepOutput."""
    def step():
        out = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        out.backward()
        optimizer.step()
    return step


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(s: SpeedSettings, device: torch.device) -> dict[str, Any]:
    info = DATASETS[s.dataset]
    torch.manual_seed(0)
    tune_for(device)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    base = build_model(s.model, info.num_classes, info.in_channels, info.image_size).to(device, memory_format=fmt)
    model = torch.compile(base) if s.compile else base  # warm-up calls absorb the compilation
    # lr 0: the same kernels as training, but the model stays at its initialisation. Trained on one repeated
    # batch it would memorise it within the warm-up, and LRAT would then need its anchor pass for most instances
    # (t > 0.9975), which real training needs for few: every method is timed on the same untrained network.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    x, y = _synthetic_batch(s, device, s.batch_size)
    x = x.contiguous(memory_format=fmt)

    def plain_loss():
        with autocast(device, s.precision):
            return StepOutput(torch.nn.functional.cross_entropy(model(x).float(), y))

    model.train()
    plain = s.batch_size / _timed(_train_step(optimizer, plain_loss), s.steps, s.warmup, device)
    rows = []
    for attack in s.train_attacks:
        cfg = TrainConfig(method="at", train_attack=attack, dataset=s.dataset, model=s.model, eps=s.eps,
                          attack_step_size=s.eps / 4, precision=s.precision)
        ctx = StepContext(attacks=build_train_attacks(cfg), attack_names=cfg.attack_names, epoch=1, epochs=1,
                          make_attack=lambda n, c=cfg: TRAIN_ATTACKS[n].build(c))
        k = attack_steps_per_example(cfg)
        for name in s.methods:
            method = build_method_reweighting_now(name)
            try:  # the same refusal `bench run` gives: skip pairs the method cannot take
                method.check_attacks(cfg.attack_names, cfg.attack_steps)
            except UsageError:
                continue

            stats: dict[str, torch.Tensor] = {}

            def adv_loss(method=method, ctx=ctx, stats=stats):
                with autocast(device, s.precision):
                    out = method.loss(model, x, y, ctx)
                stats.update(out.stats)
                return out

            model.train()
            ips = s.batch_size / _timed(_train_step(optimizer, adv_loss), s.steps, s.warmup, device)
            ratio = plain / ips
            rows.append({"method": name, "train_attack": attack, "attack_steps": k, "images_per_s": ips,
                         "ratio": ratio, "efficiency": ((2 * k + 3) / 3) / ratio,
                         **{key: float(v) for key, v in stats.items()}})
    for attack in s.train_attacks:
        at = next((r["images_per_s"] for r in rows if r["method"] == "at" and r["train_attack"] == attack), None)
        for r in rows:
            if r["train_attack"] == attack:
                r["overhead"] = at / r["images_per_s"] if at else None
    return {"plain_images_per_s": plain, "rows": rows, **_eval_speed(s, base, device),
            "epoch_overhead": _epoch_overhead(s, device, rows), "peak_memory_mb": peak_memory_mb(device)}


def _eval_speed(s: SpeedSettings, model, device) -> dict[str, float]:
    """Points/s of each evaluation attack. The labels are the model's own predictions, so every point starts
    correct; how many survive each AutoAttack component depends on the model (an untrained network in eval mode
    is often so confident that all do, which gives AutoAttack's full cost, as on a very robust model)."""
    model.eval().requires_grad_(False)
    x, _ = _synthetic_batch(s, device, s.eval_points)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
    out = {}
    for name in s.eval_attacks:
        _sync(device)
        t0 = time.perf_counter()
        run_eval_attack(model, x, y, name, eps=s.eps, batch_size=max(s.eval_points, 1))
        _sync(device)
        out[f"{name}_points_per_s"] = s.eval_points / (time.perf_counter() - t0)
    return out


def _epoch_overhead(s: SpeedSettings, device, rows) -> dict[str, float] | None:
    """One real train_run epoch of `at` on synthetic data; the share of its wall time that the pure training
    steps (timed above) do not explain is the loop's overhead: data, logging, validation, checkpointing."""
    at = next((r for r in rows if r["method"] == "at"), None)
    if at is None or s.epoch_images <= 0:
        return None
    # On a GPU or compiled, the first epoch pays for autotuning and compiling: time the second one.
    epochs = 2 if device.type == "cuda" or s.compile else 1
    info = DATASETS[s.dataset]
    x, y = _synthetic_batch(s, torch.device("cpu"), s.epoch_images + 128)
    to_u8 = lambda t: (t * 255).to(torch.uint8)
    split = lambda a, b: Split(to_u8(x[a:b]), y[a:b], torch.arange(a, b))
    data = DataBundle(info, split(0, s.epoch_images), split(s.epoch_images, s.epoch_images + 128), split(0, 0))
    cfg = TrainConfig(method="at", train_attack=at["train_attack"], dataset=s.dataset, model=s.model, eps=s.eps,
                      attack_step_size=s.eps / 4, epochs=epochs, batch_size=s.batch_size, val_size=128,
                      precision=s.precision, augment=info.augment)
    with tempfile.TemporaryDirectory() as tmp:
        entry = train_run(cfg, data, Path(tmp), device,
                          runtime=RuntimeOptions(channels_last=s.channels_last, compile=s.compile))[-1]
    step_seconds = s.epoch_images / at["images_per_s"]
    return {"epoch_images": s.epoch_images, "epoch_seconds": entry["seconds"], "step_seconds": step_seconds,
            "validation_and_checkpoint_seconds": entry["seconds"] - entry["train_seconds"],
            "outside_steps_fraction": max(0.0, 1 - step_seconds / entry["seconds"])}


def run_speed(s: SpeedSettings, device: torch.device, json_path: str | None = None) -> dict[str, Any]:
    result = {"settings": s.__dict__, "device": provenance(device), "threads": torch.get_num_threads(),
              "platform": platform.platform(), **measure(s, device)}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=list))
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"device: {result['device']['device']}, torch {result['device']['torch_version']}, "
             f"{result['settings']['model']} bs {result['settings']['batch_size']} {result['settings']['precision']}"
             f"{' channels_last' if result['settings']['channels_last'] else ''}"
             f"{' compiled' if result['settings']['compile'] else ''}",
             f"plain training: {result['plain_images_per_s']:.1f} images/s",
             f"{'method':<8} {'attack':<8} {'K':>3} {'images/s':>9} {'R=P/A':>7} {'E':>6} {'O':>6}"]
    for r in result["rows"]:
        o = f"{r['overhead']:.3f}" if r.get("overhead") else "-"
        lines.append(f"{r['method']:<8} {r['train_attack']:<8} {r['attack_steps']:>3} {r['images_per_s']:>9.1f} "
                     f"{r['ratio']:>7.2f} {r['efficiency']:>6.2f} {o:>6}")
    evals = ", ".join(f"{a} {result[f'{a}_points_per_s']:.1f}" for a in result["settings"]["eval_attacks"])
    lines.append(f"eval points/s: {evals or 'not measured'}; peak memory {result['peak_memory_mb']:.0f} MB")
    if result.get("epoch_overhead"):
        e = result["epoch_overhead"]
        lines.append(f"epoch: {e['epoch_seconds']:.2f}s, {e['outside_steps_fraction']:.1%} outside the training "
                     f"steps ({e['validation_and_checkpoint_seconds']:.2f}s validation + checkpoint)")
    return "\n".join(lines)
