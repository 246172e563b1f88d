"""Evaluate stored checkpoints with an eval suite: one atomic result file per (checkpoint, attack), so an
interrupted evaluation resumes per attack, and a later `bench eval` adds attacks without retraining.
The `worst` row is the per-example AND of every attack stored for that checkpoint (AutoAttack's rule: a
point is robust only if every attack fails on it)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.config import EvalConfig
from bench.data import Split, to_float
from bench.eval_attacks import EVAL_ATTACKS, run_eval_attack
from bench.provenance import provenance
from bench.store import SCHEMA_VERSION, Store, decode_flags, eval_group, load_run

log = logging.getLogger(__name__)

# Training-config fields copied into every row (the choices a reader of a table must know).
TRAIN_COLUMNS = ("method", "train_attack", "dataset", "model", "eps", "epochs", "seed", "attack_steps",
                 "attack_step_size", "attack_bn_mode", "cw_kappa", "saa_targets", "saa_steps", "saa_merge",
                 "train_subset", "val_size", "batch_size", "lr", "weight_decay", "precision")


def is_seen(eval_attack: str, train_attack: str) -> bool:
    trained = set(train_attack.split("+"))
    return bool(trained & set(EVAL_ATTACKS[eval_attack].trained_by)) if eval_attack in EVAL_ATTACKS else False


def make_row(config: dict[str, Any], checkpoint: str, checkpoint_epoch: int | None, attack: str, flags,
             eval_eps: float, ecfg: EvalConfig, seconds: float, warnings: list[str], prov: dict[str, str]) -> dict:
    train = config["train"]
    n = len(flags)
    row = {"run_id": config["run_id"], **{k: train[k] for k in TRAIN_COLUMNS},
           **{f"p_{k}": v for k, v in sorted(train["method_params"].items())},
           "checkpoint": checkpoint, "checkpoint_epoch": checkpoint_epoch, "eval_attack": attack,
           "eval_eps": eval_eps, "threat_model": ecfg.threat_model, "n_eval": n,
           "n_robust": int(sum(bool(f) for f in flags)), "eval_seed": ecfg.seed, "eval_precision": ecfg.precision,
           "seen": is_seen(attack, train["train_attack"]), "eval_seconds": seconds,
           "warnings": " | ".join(dict.fromkeys(warnings)), "schema_version": SCHEMA_VERSION, **prov}
    row["accuracy"] = row["n_robust"] / n if n else float("nan")
    return row


def _checkpoint_epoch(history: list[dict], checkpoint: str) -> int | None:
    if not history:
        return None
    if checkpoint == "last":
        return history[-1]["epoch"]
    best = [h["epoch"] for h in history if h.get("best")]
    return best[-1] if best else None


def evaluate_run(store: Store, run_id: str, ecfg: EvalConfig, test: Split, device: torch.device,
                 on_attack: Callable[[str, str, dict], None] | None = None) -> list[dict]:
    """Run every (checkpoint, attack) of `ecfg` not yet stored for `run_id`; return all rows of the suite."""
    config = store.config(run_id)
    eps = config["train"]["eps"] if ecfg.eps is None else ecfg.eps
    history = store.history(run_id)
    prov = provenance(device)
    x, y = to_float(test.x).to(device), test.y.to(device)
    rows = []
    for ckpt in ecfg.checkpoints:
        group = eval_group(ckpt, ecfg.threat_model, eps, len(y))
        model = None
        for attack in ecfg.attacks:
            stored = store.read_eval(run_id, group, attack)
            if stored is not None:
                rows.append(stored["row"])
                continue
            if model is None:
                model, _ = load_run(store.run_dir(run_id), ckpt, str(device))
            model.eval()
            t0 = time.perf_counter()
            state = store.eval_path(run_id, group, attack).with_name(f"{attack}.aa_state")
            outcome = run_eval_attack(model, x, y, attack, eps=eps, threat_model=ecfg.threat_model,
                                      seed=ecfg.seed, batch_size=ecfg.batch_size, state_path=state)
            row = make_row(config, ckpt, _checkpoint_epoch(history, ckpt), attack, outcome.flags.tolist(), eps,
                           ecfg, time.perf_counter() - t0, outcome.warnings, prov)
            store.write_eval(run_id, group, attack, row, outcome.flags.tolist())
            state.unlink(missing_ok=True)
            rows.append(row)
            if on_attack:
                on_attack(ckpt, attack, row)
        rows.append(write_worst(store, run_id, group, config, ckpt, _checkpoint_epoch(history, ckpt), eps, ecfg, prov))
    return rows


def write_worst(store: Store, run_id: str, group: str, config: dict, ckpt: str, ckpt_epoch, eps: float,
                ecfg: EvalConfig, prov: dict) -> dict:
    """The per-example AND over every attack stored in `group` (natural included)."""
    flags = None
    attacks = []
    for path in sorted(store.eval_path(run_id, group, "x").parent.glob("*.json")):
        if path.stem == "worst":
            continue
        rec = store.read_eval(run_id, group, path.stem)
        f = decode_flags(rec["flags"])
        flags = f if flags is None else [a and b for a, b in zip(flags, f)]
        attacks.append(path.stem)
    row = make_row(config, ckpt, ckpt_epoch, "worst", flags, eps, ecfg, 0.0, [], prov)
    row["worst_of"] = ",".join(attacks)
    store.write_eval(run_id, group, "worst", row, flags)
    return row
