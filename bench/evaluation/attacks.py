"""Evaluation attacks (docs/methods.md sec. 4), each giving per-example robust flags on a test split.

Model in eval mode (refused otherwise, bench/evaluation/guards.py), fp32 with TF32 off (the RobustBench protocol), inputs in
[0, 1], L-inf or L2. The PGD family runs only on the points the model classifies correctly (the others are not
robust anyway). `aa` is AutoAttack `standard` from `pyautoattack` (the official code); `apgd-ce`, `apgd-t`,
`fab-t`, `square` are its components alone, with the standard version's settings. Every call is seeded and
isolated from the caller's RNG stream (AutoAttack reseeds the global RNG).

AutoAttack runs one component at a time over the points still robust, in batches, exactly as
`AutoAttack.run_standard_evaluation` does (each of its attacks reseeds per batch, so the flags are identical to
one direct call; a test checks it). Our own state file records the flags after every batch, so an interrupted
run resumes where it stopped: pyautoattack 0.2.0's `state_path` resume cannot be used, because it serialises
its attack set with `default=str` and then refuses every state file it wrote ("different set of attacks").
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.attacks.pgd import PGD, AttackResult
from bench.config.catalog import EVAL_ATTACKS as CATALOG, EvalAttackEntry
from bench.evaluation.guards import refuse_unsafe
from bench.evaluation.integrity import BallCheck, batch_label, checked_logits
from bench.plugins import attach
from bench.store import StoreError, decode_flags, encode_flags, read_json, write_json

log = logging.getLogger(__name__)

AA_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
PGD_NAMES = ("fgsm", "pgd20", "cw20")
AA_NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class EvalAttackInfo:
    entry: EvalAttackEntry  # label, summary, strength: bench/config/catalog.py
    params: dict  # recorded settings

    @property
    def summary(self) -> str:
        return self.entry.summary

    @property
    def strength(self) -> int:
        """Monotonicity guard: accuracy must not rise with strength (natural 0 < fgsm < pgd < aa)."""
        return self.entry.strength


def build_pgd(name: str, eps: float, threat_model: str) -> PGD:
    if name == "fgsm":
        return PGD(eps, steps=1, step_size=eps, random_start=False, norm=threat_model)
    if name == "pgd20":
        return PGD(eps, steps=20, step_size=eps / 4, loss="ce", norm=threat_model)
    if name == "cw20":
        return PGD(eps, steps=20, step_size=eps / 4, loss="cw", cw_kappa=0.0, norm=threat_model)
    raise KeyError(name)


_PARAMS = {
    "natural": {}, "fgsm": {"steps": 1}, "pgd20": {"steps": 20, "step_size": "eps/4"},
    "cw20": {"steps": 20, "step_size": "eps/4", "cw_kappa": 0.0}, "aa": {"version": "standard"},
    **{name: {"version": "custom"} for name in AA_COMPONENTS},
}
EVAL_ATTACKS: dict[str, EvalAttackInfo] = {name: EvalAttackInfo(CATALOG[name], params)  # built-ins; plugins below
                                           for name, params in _PARAMS.items()}
PLUGIN_BUILDERS: dict[str, Callable] = {}  # plugin evaluation attacks: (eps, threat_model) -> attack (bench/plugins.py)


def _install_plugin(name: str, plugin) -> None:
    EVAL_ATTACKS[name] = EvalAttackInfo(plugin.entry, plugin.params)
    PLUGIN_BUILDERS[name] = plugin.build


attach("eval_attacks", _install_plugin)
# What Square is compared with (guards.check_square): AutoAttack's own white-box attacks, as in its
# check_square_sr. FGSM and PGD-20 are left out: Square (5000 queries) beating them is expected, not masking.
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")


class _WarningCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@dataclass
class EvalOutcome:
    flags: torch.Tensor  # bool (n,), on the CPU
    warnings: list[str]  # AutoAttack's own checks, deduplicated, in order
    resumed: bool = False  # an AutoAttack state file was picked up
    info: dict = field(default_factory=dict)  # what ran: precision, tf32, components


def _batches(n: int, size: int):
    return ((i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def _natural(model, x, y, batch_size) -> torch.Tensor:
    return torch.cat([checked_logits(model(x[a:b]), b - a, f"the clean test points {a}-{b - 1}").argmax(1) == y[a:b]
                      for a, b in _batches(len(y), batch_size)])


def run_attack_flags(model, x, y, attack, batch_size: int = 256, check: BallCheck | None = None) -> torch.Tensor:
    """Robust flags of any `attack(model, x, y) -> AttackResult`, run on the correctly classified points only.
    `check`: each batch's x_adv is checked against the threat model before its flags count (run_eval_attack
    always gives one; without it only the model's logits are checked)."""
    flags = _natural(model, x, y, batch_size)
    idx = torch.nonzero(flags).flatten()
    batches = list(_batches(len(idx), batch_size))
    for b, (lo, hi) in enumerate(batches):
        sel = idx[lo:hi]
        result: AttackResult = attack(model, x[sel], y[sel])
        where = batch_label(b, len(batches), sel)
        x_adv = check(x[sel], result, where) if check is not None else result.x_adv
        with torch.no_grad():
            logits = checked_logits(model(x_adv), len(sel), f"the adversarial examples of {where}")
            flags[sel] = logits.argmax(1) == y[sel]
    return flags


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _start_state(model, x, y, batch_size: int, state_path: Path | None, key: dict) -> tuple[dict, bool]:
    """(state, resumed): the AutoAttack state at `state_path` when it was written for this very evaluation
    (`key`), else a fresh one holding the natural flags."""
    state = None
    if state_path is not None and state_path.exists():
        try:
            state = read_json(state_path)
        except StoreError as exc:
            log.warning("ignoring a damaged AutoAttack state: %s", exc)
    if state is not None and (not isinstance(state, dict) or state.get("key") != key):
        log.warning("ignoring AutoAttack state %s: it was written for another evaluation", state_path)
        state = None
    if state is not None:
        log.info("resuming AutoAttack from %s (done: %s)", state_path, ", ".join(state["done"]) or "nothing")
        return state, True
    flags = _natural(model, x, y, batch_size)
    return {"key": key, "flags": encode_flags(flags.tolist()), "done": [], "current": None, "start": None,
            "batches_done": 0, "acc": {"clean": flags.float().mean().item()}}, False


def _run_autoattack(model, x, y, components: tuple[str, ...], eps: float, threat_model: str, seed: int,
                    batch_size: int, state_path: Path | None, logger: logging.Logger,
                    model_id: str | None = None,
                    check: BallCheck | None = None) -> tuple[torch.Tensor, bool, dict[str, float]]:
    """AutoAttack's composition, component by component over the still-robust points, resumable per batch.
    Returns the flags, whether a state was resumed, and each component's seconds (summed over resumes).
    `check`: every batch's x_adv is checked against the threat model; its largest perturbation is kept in the
    state, so a resumed evaluation still reports the largest over all batches."""
    from pyautoattack import AutoAttack, checks

    key = {"components": list(components), "eps": eps, "norm": threat_model, "seed": seed,
           "batch_size": batch_size, "n": len(y), "points": _fingerprint(x, y)}
    if model_id is not None:  # a state of another checkpoint file never resumes
        key["model"] = model_id
    check = check or BallCheck("aa", eps, threat_model)
    state, resumed = _start_state(model, x, y, batch_size, state_path, key)
    flags = torch.tensor(decode_flags(state["flags"]), dtype=torch.bool, device=x.device)
    check.largest = max(check.largest, float(state.get("max_perturbation", 0.0)))

    def save():
        state["flags"] = encode_flags(flags.tolist())
        state["max_perturbation"] = check.largest
        if state_path is not None:
            write_json(state_path, state)

    save()
    adversary = AutoAttack(model, eps=eps, norm=AA_NORMS[threat_model], seed=seed, version="standard", device=x.device)
    adversary.logger = logger
    for comp in components:
        if comp in state["done"]:
            continue
        if state["current"] != comp:  # the robust set this component starts from, fixed for all its batches
            state.update(current=comp, start=encode_flags(flags.tolist()), batches_done=0)
        start = torch.tensor(decode_flags(state["start"]), dtype=torch.bool, device=x.device)
        idx = torch.nonzero(start).flatten()
        adversary.attacks_to_run = [comp]  # the component with the standard version's settings
        seconds = state.setdefault("seconds", {})
        batches = list(_batches(len(idx), batch_size))
        for b, (lo, hi) in enumerate(batches):
            if b < state["batches_done"]:
                continue
            sel = idx[lo:hi]
            t0 = time.perf_counter()
            x_adv, y_adv = adversary.run_standard_evaluation(x[sel], y[sel], batch_size=len(sel))
            check(x[sel], x_adv, f"its {comp} {batch_label(b, len(batches), sel)}")
            flags[sel] &= y_adv.to(y.device) == y[sel]
            seconds[comp] = seconds.get(comp, 0.0) + time.perf_counter() - t0
            state["batches_done"] = b + 1
            save()
        state["done"].append(comp)
        state["acc"][comp] = flags.float().mean().item()
        save()
        log.info("AutoAttack %s done: robust accuracy %.4f on %d points", comp, state["acc"][comp], len(y))
    checks.check_square_sr(state["acc"], logger=logger)  # AutoAttack's own check, on the cumulative accuracies
    return flags, resumed, state.get("seconds", {})


@contextlib.contextmanager
def fp32_precision(allow_tf32: bool = False):
    """TF32 off for the duration (RobustBench/AutoAttack numbers are fp32); the previous flags are restored."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def run_eval_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, *, eps: float,
                    threat_model: str = "linf", seed: int = 0, batch_size: int = 256,
                    state_path: Path | None = None, allow_tf32: bool = False,
                    model_id: str | None = None) -> EvalOutcome:
    """Per-example robust flags of `name` on (x, y). The caller puts the model in eval mode (refused otherwise).

    `state_path` (AutoAttack names only): where progress is kept; an existing file for the same evaluation is
    resumed, one for another evaluation (or, with `model_id`, another checkpoint file) or a damaged one is
    ignored. The caller deletes it when the result is stored.
    """
    if name not in EVAL_ATTACKS:
        raise KeyError(name)
    refuse_unsafe(model, x, eps, threat_model)
    collector = _WarningCollector()
    aa_logger = logging.getLogger("auto-attack")
    old_level, old_propagate = aa_logger.level, aa_logger.propagate
    aa_logger.setLevel(logging.WARNING)  # its INFO/DEBUG lines are noise in our progress
    aa_logger.propagate = False  # its warnings repeat per batch; they come back once, in the row
    aa_logger.addHandler(collector)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    resumed, component_seconds = False, {}
    check = BallCheck(name, eps, threat_model)  # every x_adv, built-in or plugin (natural has none: 0)
    try:
        with torch.random.fork_rng(devices=devices), fp32_precision(allow_tf32):
            torch.manual_seed(seed)
            if name == "natural":
                flags = _natural(model, x, y, batch_size)
            elif name in PGD_NAMES:
                flags = run_attack_flags(model, x, y, build_pgd(name, eps, threat_model), batch_size, check)
            elif name in PLUGIN_BUILDERS:
                flags = run_attack_flags(model, x, y, PLUGIN_BUILDERS[name](eps, threat_model), batch_size, check)
            else:
                components = AA_COMPONENTS if name == "aa" else (name,)
                flags, resumed, component_seconds = _run_autoattack(
                    model, x, y, components, eps, threat_model, seed, batch_size, state_path, aa_logger, model_id,
                    check)
    finally:
        aa_logger.removeHandler(collector)
        aa_logger.setLevel(old_level)
        aa_logger.propagate = old_propagate
    warnings = list(dict.fromkeys(collector.messages))
    for w in warnings:
        log.warning("AutoAttack check (%s): %s", name, w)
    info = {"eval_precision": "tf32" if allow_tf32 else "fp32", "eval_tf32": allow_tf32,
            "max_perturbation": check.largest}
    if component_seconds:  # where AutoAttack's time went, e.g. "apgd-ce=2.7;apgd-t=19.9;fab-t=44.3;square=59.3"
        info["aa_component_seconds"] = ";".join(f"{c}={component_seconds[c]:.1f}" for c in components
                                                if c in component_seconds)
    return EvalOutcome(flags.bool().cpu(), warnings, resumed, info)
