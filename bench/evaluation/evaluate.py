"""Evaluate stored checkpoints with an eval suite: one atomic result file per (checkpoint, attack), so an
interrupted evaluation resumes per attack (AutoAttack per batch), and a later `bench eval` adds attacks or
another eps without retraining. The `worst` row is the per-example AND of every attack stored for that
checkpoint (AutoAttack's rule: a point is robust only if every attack fails on it), recomputed whenever the
suite runs.

Every row carries the guards (bench/evaluation/guards.py) as `guard_<name>` columns ("ok" / "flag: why" / "skip: why")
plus `guards_flagged`; the suite guards (monotone, square) are rewritten into every row of the group when the
worst row is recomputed. RobustBench protocol columns: `n_examples`, `test_points` ("first-n": the first N
test points in the loader's order, RobustBench's protocol on CIFAR; "balanced-subset" otherwise),
`points_sha` (the exact points, so rows of one group provably share them), `eval_precision`, `eval_tf32`,
`eval_batch_size` (AutoAttack's random starts are drawn per batch: needed to reproduce its flags exactly).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.config import EvalConfig, checkpoint_epoch_number
from bench.config.catalog import default_eps
from bench.data import Split, to_float
from bench.evaluation.attacks import AA_COMPONENTS, EVAL_ATTACKS, WHITE_BOX, run_eval_attack
from bench.evaluation.guards import (check_autoattack, check_model, check_monotone, check_square, columns,
                          merge_columns)
from bench.config.names import UsageError
from bench.provenance import provenance
from bench.config.relations import attack_relation
from bench.store import SCHEMA_VERSION, Store, decode_flags, eval_group, load_run

log = logging.getLogger(__name__)

# Training-config fields copied into every row (the choices a reader of a table must know).
TRAIN_COLUMNS = ("method", "train_attack", "dataset", "model", "eps", "epochs", "seed", "attack_steps",
                 "attack_step_size", "attack_bn_mode", "cw_kappa", "saa_targets", "saa_steps", "saa_merge",
                 "train_subset", "val_size", "batch_size", "lr", "weight_decay", "precision")
AA_NAMES = ("aa",) + AA_COMPONENTS
GROUP_COLUMNS = ("n_examples", "test_points", "points_sha")  # shared by every row of a group


def is_seen(eval_attack: str, train_attack: str, threat_model: str = "linf", eval_eps: float | None = None,
            train_eps: float | None = None, method_params: dict[str, Any] | None = None) -> bool:
    """The eval attack is the training attack's own loss and algorithm, under the training's threat model and
    budget (bench/config/relations.py: `attack_relation(...) == "seen"`)."""
    return attack_relation(eval_attack, train_attack, method_params, threat_model=threat_model,
                           eval_eps=eval_eps, train_eps=train_eps) == "seen"


def resolve_eval_eps(dataset: str, train_eps: float, ecfg: EvalConfig) -> float:
    """The eval budget: as given; else the training eps for L-inf (training is L-inf), the usual L2 default."""
    if ecfg.eps is not None:
        return ecfg.eps
    return train_eps if ecfg.threat_model == "linf" else default_eps(dataset, ecfg.threat_model)


def points_columns(test: Split) -> dict[str, Any]:
    n = len(test)
    first_n = bool(torch.equal(test.indices.cpu(), torch.arange(n)))
    digest = hashlib.sha256(test.indices.cpu().numpy().tobytes() + test.y.cpu().numpy().tobytes()).hexdigest()
    return {"n_examples": n, "test_points": "first-n" if first_n else "balanced-subset", "points_sha": digest[:16]}


def relation_columns(attack: str, train: dict[str, Any], threat_model: str, eval_eps: float) -> dict[str, Any]:
    """`attack_relation` (seen | related | unseen) and `seen` (true only for seen) of one row."""
    relation = attack_relation(attack, train["train_attack"], train.get("method_params"), threat_model=threat_model,
                               eval_eps=eval_eps, train_eps=train["eps"])
    return {"attack_relation": relation, "seen": relation == "seen"}


def make_row(config: dict[str, Any], checkpoint: str, checkpoint_epoch: int | None, attack: str, flags,
             eval_eps: float, ecfg: EvalConfig, seconds: float, warnings: list[str], prov: dict[str, str],
             extra: dict[str, Any] | None = None) -> dict:
    train = config["train"]
    n = len(flags)
    row = {"run_id": config["run_id"], **{k: train[k] for k in TRAIN_COLUMNS},
           **{f"p_{k}": v for k, v in sorted(train["method_params"].items())},
           "checkpoint": checkpoint, "checkpoint_epoch": checkpoint_epoch, "eval_attack": attack,
           "eval_eps": eval_eps, "threat_model": ecfg.threat_model, "n_eval": n,
           "n_robust": int(sum(bool(f) for f in flags)), "eval_seed": ecfg.seed, "eval_precision": ecfg.precision,
           **relation_columns(attack, train, ecfg.threat_model, eval_eps), "eval_seconds": seconds,
           "warnings": " | ".join(dict.fromkeys(warnings)), "schema_version": SCHEMA_VERSION, **prov,
           **(extra or {})}
    row["accuracy"] = row["n_robust"] / n if n else float("nan")
    return row


def _checkpoint_epoch(history: list[dict], checkpoint: str) -> int | None:
    if not history:
        return None
    if checkpoint == "last":
        return history[-1]["epoch"]
    if (n := checkpoint_epoch_number(checkpoint)) is not None:
        return n
    best = [h["epoch"] for h in history if h.get("best")]
    return best[-1] if best else None


def evaluate_run(store: Store, run_id: str, ecfg: EvalConfig, test: Split, device: torch.device,
                 on_attack: Callable[[str, str, dict], None] | None = None) -> list[dict]:
    """Run every (checkpoint, attack) of `ecfg` not yet stored for `run_id`; return all rows of the suite.

    Raises GuardFailure (train-mode model, inputs outside [0, 1]) or UsageError (impossible eps) before
    anything is written for that checkpoint.
    """
    config = store.config(run_id)
    train = config["train"]
    eps = resolve_eval_eps(train["dataset"], train["eps"], ecfg)
    history = store.history(run_id)
    prov = provenance(device)
    x, y = to_float(test.x).to(device), test.y.to(device)
    shared = points_columns(test)
    rows = []
    for ckpt in ecfg.checkpoints:
        group = eval_group(ckpt, ecfg.threat_model, eps, len(y), ecfg.precision)
        ckpt_epoch = _checkpoint_epoch(history, ckpt)
        model, model_guards = None, []
        for attack in ecfg.attacks:
            if store.read_eval(run_id, group, attack) is not None:
                continue
            if model is None:
                if not (store.run_dir(run_id) / f"{ckpt}.pt").exists():
                    raise UsageError(f"Run {run_id} has no checkpoint '{ckpt}': an epoch checkpoint is kept only "
                                     f"when it is asked for before training (retrain with --force to get it).")
                model, _ = load_run(store.run_dir(run_id), ckpt, str(device))
                model.requires_grad_(False)  # attacks need input gradients only
                model_guards = check_model(model, x[:ecfg.batch_size], y[:ecfg.batch_size], eps, ecfg.threat_model)
                for g in model_guards:
                    if g.status == "flag":
                        log.warning("guard %s flagged on %s/%s: %s", g.name, run_id, ckpt, g.detail)
            state = store.eval_path(run_id, group, attack).with_name(f"{attack}.aa_state")
            t0 = time.perf_counter()
            outcome = run_eval_attack(model, x, y, attack, eps=eps, threat_model=ecfg.threat_model, seed=ecfg.seed,
                                      batch_size=ecfg.batch_size, state_path=state if attack in AA_NAMES else None,
                                      allow_tf32=ecfg.precision == "tf32")
            guards = model_guards + [check_autoattack(outcome.warnings, attack in AA_NAMES)]
            extra = {**shared, **outcome.info, "eval_batch_size": ecfg.batch_size, "aa_resumed": outcome.resumed,
                     **columns(guards)}
            row = make_row(config, ckpt, ckpt_epoch, attack, outcome.flags.tolist(), eps, ecfg,
                           time.perf_counter() - t0, outcome.warnings, prov, extra)
            store.write_eval(run_id, group, attack, row, outcome.flags.tolist())
            state.unlink(missing_ok=True)
            if on_attack:
                on_attack(ckpt, attack, row)
        worst = write_worst(store, run_id, group, config, ckpt, ckpt_epoch, eps, ecfg, prov)
        rows += [store.read_eval(run_id, group, a)["row"] for a in ecfg.attacks] + [worst]
    return rows


def write_worst(store: Store, run_id: str, group: str, config: dict, ckpt: str, ckpt_epoch, eps: float,
                ecfg: EvalConfig, prov: dict) -> dict:
    """The per-example AND over every attack stored in `group` (natural included), plus the suite guards
    (monotone, square), which are also written into every stored row of the group."""
    records = {}
    for path in sorted(store.eval_path(run_id, group, "x").parent.glob("*.json")):
        if path.stem != "worst":
            records[path.stem] = store.read_eval(run_id, group, path.stem)
    flags_by = {a: decode_flags(r["flags"]) for a, r in records.items()}
    shas = {r["row"].get("points_sha") for r in records.values()} - {None}
    if len(shas) > 1 or len({len(f) for f in flags_by.values()}) > 1:
        raise ValueError(f"Rows in {store.run_dir(run_id) / 'evals' / group} were computed on different test "
                         f"points ({', '.join(sorted(map(str, shas)))}): their per-example AND is meaningless.")
    aa_warnings = [w for r in records.values() for w in r["row"].get("warnings", "").split(" | ") if w]
    suite = [check_monotone(flags_by, {a: EVAL_ATTACKS[a].strength for a in flags_by if a in EVAL_ATTACKS}),
             check_square(flags_by, WHITE_BOX, aa_warnings)]
    updated = []
    for attack, record in records.items():
        row = {**record["row"], **{f"guard_{g.name}": g.value for g in suite}}
        row["guards_flagged"] = ",".join(k[len("guard_"):] for k, v in row.items()
                                         if k.startswith("guard_") and str(v).startswith("flag"))
        if row != record["row"]:
            store.write_eval(run_id, group, attack, row, flags_by[attack])
        updated.append(row)
    flags = None
    for f in flags_by.values():
        flags = list(f) if flags is None else [a and b for a, b in zip(flags, f)]
    extra = {k: updated[0][k] for k in GROUP_COLUMNS if updated and k in updated[0]}
    extra.update(merge_columns(updated))
    row = make_row(config, ckpt, ckpt_epoch, "worst", flags or [], eps, ecfg, 0.0, [], prov, extra)
    row["worst_of"] = ",".join(records)
    store.write_eval(run_id, group, "worst", row, flags or [])
    return row
