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

Checkpoint identity: every row records `checkpoint_sha`, the first 16 hex digits of the SHA-256 of the exact
checkpoint bytes it was computed on (read once per checkpoint per evaluation; the model is loaded from those
same bytes). A stored row is reused only if it matches the current file (bench.store.row_matches: rows
without the column, from older stores, match only a final checkpoint they do not predate); a requested attack
whose row does not match is evaluated again, an unrequested one is set aside (<attack>.json.stale), and the
worst row is recomputed. `best` and `last` are evaluated only once training is finished (TRAINED): before
that they are not the run's models.

External models (bench.api.evaluate, `bench eval --model-file`) go through the same `evaluate_run`: their run
folder holds the module's state dict as its one checkpoint, and the module itself is passed in (the harness
cannot rebuild an architecture it does not know).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.config import EvalConfig, checkpoint_epoch_number
from bench.config.catalog import default_eps, is_external
from bench.data import DATASETS, Split, to_float
from bench.evaluation.attacks import AA_COMPONENTS, EVAL_ATTACKS, WHITE_BOX, run_eval_attack
from bench.evaluation.guards import (check_autoattack, check_model, check_monotone, check_square, columns,
                          merge_columns)
from bench.evaluation.integrity import AdversarialViolation
from bench.config.names import UsageError
from bench.fingerprint import recorded_fingerprint
from bench.provenance import provenance
from bench.config.relations import attack_relation
from bench.store import (SCHEMA_VERSION, TRAINED, Store, StoreError, check_eval, check_torch_file, decode_flags,
                         eval_group, file_sha,
                         load_run, read_json, row_matches, set_aside)

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


def reconcile_group(store: Store, run_id: str, group: str, requested: tuple[str, ...], sha: str, checkpoint: Path,
                    final: bool) -> set[str]:
    """The requested attacks of `group` to evaluate (not stored, damaged, or computed on another checkpoint
    file than the one with SHA-256 prefix `sha`); stored unrequested rows that are damaged or do not match are
    set aside (<attack>.json.damaged / .stale), so the worst row never mixes models."""
    todo = set()
    for attack in requested:
        try:
            record = store.read_eval(run_id, group, attack)
        except StoreError as exc:
            log.warning("damaged eval result, evaluating it again: %s", exc)
            todo.add(attack)
            continue
        if record is None:
            todo.add(attack)
        elif not row_matches(record["row"], sha, checkpoint, final):
            log.warning("%s was computed on another %s (checkpoint_sha %s, the file's is %s): evaluating it again",
                        store.eval_path(run_id, group, attack), checkpoint.name,
                        record["row"].get("checkpoint_sha", "not recorded"), sha)
            todo.add(attack)
    folder = store.eval_path(run_id, group, "x").parent
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.stem in requested or path.stem == "worst":
            continue
        try:
            row = check_eval(read_json(path), path)["row"]
        except StoreError as exc:
            log.warning("damaged eval result set aside as %s: %s", set_aside(path, "damaged").name, exc)
            continue
        if not row_matches(row, sha, checkpoint, final):
            log.warning("%s was computed on another %s: set aside as %s (evaluate it again with bench eval)",
                        path, checkpoint.name, set_aside(path, "stale").name)
    return todo


def drop_mismatched_rows(store: Store, run_id: str) -> list[Path]:
    """Check every stored row of a run against its checkpoint file (SHA-256, each file hashed once): damaged
    or mismatched rows are set aside, with their group's worst row (derived from them). Returns what was set
    aside. The runner calls it before DONE, so a finished cell never shows rows of a model it no longer has."""
    run_dir = store.run_dir(run_id)
    final = store.has(run_id, TRAINED)
    shas: dict[str, str | None] = {}
    moved: list[Path] = []
    for folder in sorted((run_dir / "evals").glob("*")) if (run_dir / "evals").is_dir() else []:
        bad = []
        for path in sorted(folder.glob("*.json")):
            if path.stem == "worst":
                continue
            try:
                row = check_eval(read_json(path), path)["row"]
            except StoreError as exc:
                log.warning("%s", exc)
                bad.append((path, "damaged"))
                continue
            ckpt = run_dir / f"{row.get('checkpoint')}.pt"
            if row.get("checkpoint") not in shas:
                shas[row.get("checkpoint")] = file_sha(ckpt) if ckpt.is_file() else None
            sha = shas[row.get("checkpoint")]
            is_final = final or checkpoint_epoch_number(str(row.get("checkpoint"))) is not None
            if sha is not None and not row_matches(row, sha, ckpt, is_final):
                bad.append((path, "stale"))
        if bad and (folder / "worst.json").exists():
            bad.append((folder / "worst.json", "stale"))
        for path, why in bad:
            moved.append(set_aside(path, why))
            log.warning("set aside %s (%s: not a result of the run's current %s checkpoint)", path, why,
                        folder.name.split("-")[0])
    return moved


def _attack(net, x, y, attack: str, eps: float, ecfg: EvalConfig, state: Path, sha: str):
    """run_eval_attack with the suite's settings. An attack refused for its x_adv (AdversarialViolation)
    leaves nothing behind, not even its AutoAttack progress file."""
    try:
        return run_eval_attack(net, x, y, attack, eps=eps, threat_model=ecfg.threat_model, seed=ecfg.seed,
                               batch_size=ecfg.batch_size, state_path=state if attack in AA_NAMES else None,
                               allow_tf32=ecfg.precision == "tf32", model_id=sha)
    except AdversarialViolation:
        state.unlink(missing_ok=True)
        raise


def _check_evaluable(store: Store, run_id: str, train: dict, ecfg: EvalConfig, model) -> bool:
    """Whether the run's training is final (TRAINED, or an external model); UsageError when `best`/`last` are
    asked of a run still training (rows evaluated now would describe a model that training replaces)."""
    external = is_external(train)
    if model is not None and not (external and len(ecfg.checkpoints) == 1):
        raise ValueError("evaluate_run: a given model is for the one checkpoint of an external model's run")
    trained = store.has(run_id, TRAINED) or external
    unfinished = [c for c in ecfg.checkpoints if checkpoint_epoch_number(c) is None]
    if not trained and unfinished:
        raise UsageError(f"Run {run_id} has not finished training (no TRAINED marker): its {'/'.join(unfinished)} "
                         "checkpoint is not its final model yet, so rows evaluated now would describe a model that "
                         "training replaces. Finish it with `bench run`, or evaluate an epochN checkpoint it kept.")
    return trained


def _checkpoint_bytes(path: Path, run_id: str, ckpt: str) -> bytes:
    """The checkpoint file's bytes: UsageError when it does not exist, its StoreError when it is not a checkpoint
    (raised before any stored row is judged against it)."""
    if not path.exists():
        raise UsageError(f"Run {run_id} has no checkpoint '{ckpt}': an epoch checkpoint is kept only "
                         f"when it is asked for before training (retrain with --force to get it).")
    data = path.read_bytes()
    if (problem := check_torch_file(path, deep=True, data=data)) is not None:
        raise problem
    return data


def _guarded(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ecfg: EvalConfig,
             num_classes: int, where: str) -> list:
    """The model-level guards on the first batch (refusing ones raise), the flagged ones logged; the model's
    parameter gradients off (attacks need input gradients only)."""
    net.requires_grad_(False)
    guards = check_model(net, x[:ecfg.batch_size], y[:ecfg.batch_size], eps, ecfg.threat_model, num_classes)
    for g in guards:
        if g.status == "flag":
            log.warning("guard %s flagged on %s: %s", g.name, where, g.detail)
    return guards


def evaluate_run(store: Store, run_id: str, ecfg: EvalConfig, test: Split, device: torch.device,
                 on_attack: Callable[[str, str, dict], None] | None = None,
                 model: torch.nn.Module | None = None) -> list[dict]:
    """Run every (checkpoint, attack) of `ecfg` not yet stored for `run_id` (or stored from another checkpoint
    file: see the module docstring); return all rows of the suite.

    `model`: the module itself, for the run of an external model (bench.api.evaluate; one checkpoint, whose
    file holds this module's state dict): evaluated as given, on `device` and in eval mode, instead of rebuilt
    from the checkpoint (the harness does not know its architecture). An external model's checkpoint is final.

    Raises GuardFailure (train-mode model, inputs outside [0, 1]) or UsageError (impossible eps, a checkpoint
    that does not exist, `best`/`last` of a run whose training is not finished) before anything is written for
    that checkpoint; StoreError (naming the file) when a stored file cannot be used.
    """
    config = store.config(run_id)
    train = config["train"]
    trained = _check_evaluable(store, run_id, train, ecfg, model)
    eps = resolve_eval_eps(train["dataset"], train["eps"], ecfg)
    history = store.history(run_id)
    prov = {**provenance(device), "code_fingerprint": recorded_fingerprint(config)}  # the training's code, not ours
    x, y = to_float(test.x).to(device), test.y.to(device)
    shared = points_columns(test)
    rows = []
    same_file: dict[tuple[str, str], tuple[str, Any]] = {}  # (checkpoint_sha, attack) -> (checkpoint, outcome)
    for ckpt in ecfg.checkpoints:
        group = eval_group(ckpt, ecfg.threat_model, eps, len(y), ecfg.precision)
        ckpt_epoch = _checkpoint_epoch(history, ckpt)
        path = store.run_dir(run_id) / f"{ckpt}.pt"
        data = _checkpoint_bytes(path, run_id, ckpt)  # hashed once; the model is loaded from these very bytes
        sha = file_sha(data=data)
        todo = reconcile_group(store, run_id, group, ecfg.attacks, sha, path,
                               trained or checkpoint_epoch_number(ckpt) is not None)
        net, model_guards = None, []
        for attack in ecfg.attacks:
            if attack not in todo:
                continue
            if net is None:
                net = model if model is not None else load_run(store.run_dir(run_id), ckpt, str(device), data=data)[0]
                model_guards = _guarded(net, x, y, eps, ecfg, DATASETS[train["dataset"]].num_classes,
                                        f"{run_id}/{ckpt}")
            state = store.eval_path(run_id, group, attack).with_name(f"{attack}.aa_state")
            t0 = time.perf_counter()
            source, outcome = same_file.get((sha, attack), ("", None))
            if outcome is None:  # a seeded attack on the same bytes gives the same flags: best.pt == last.pt once
                outcome = _attack(net, x, y, attack, eps, ecfg, state, sha)
                same_file[(sha, attack)] = (ckpt, outcome)
            guards = model_guards + [check_autoattack(outcome.warnings, attack in AA_NAMES)]
            extra = {**shared, **outcome.info, "eval_batch_size": ecfg.batch_size, "aa_resumed": outcome.resumed,
                     "checkpoint_sha": sha, "flags_from_checkpoint": source, **columns(guards)}
            row = make_row(config, ckpt, ckpt_epoch, attack, outcome.flags.tolist(), eps, ecfg,
                           time.perf_counter() - t0, outcome.warnings, prov, extra)
            store.write_eval(run_id, group, attack, row, outcome.flags.tolist())
            state.unlink(missing_ok=True)
            if on_attack:
                on_attack(ckpt, attack, row)
        del data
        worst = write_worst(store, run_id, group, config, ckpt, ckpt_epoch, eps, ecfg, prov, checkpoint_sha=sha)
        rows += [store.read_eval(run_id, group, a)["row"] for a in ecfg.attacks] + [worst]
    return rows


def write_worst(store: Store, run_id: str, group: str, config: dict, ckpt: str, ckpt_epoch, eps: float,
                ecfg: EvalConfig, prov: dict, checkpoint_sha: str | None = None) -> dict:
    """The per-example AND over every attack stored in `group` (natural included), plus the suite guards
    (monotone, square), which are also written into every stored row of the group. `checkpoint_sha`: the
    checkpoint file's (rows without it, accepted by the identity rule, get it too; a row of another file is
    an error: reconcile_group sets those aside first)."""
    records = {}
    for path in sorted(store.eval_path(run_id, group, "x").parent.glob("*.json")):
        if path.stem != "worst":
            records[path.stem] = store.read_eval(run_id, group, path.stem)
    flags_by = {a: decode_flags(r["flags"]) for a, r in records.items()}
    shas = {r["row"].get("points_sha") for r in records.values()} - {None}
    if len(shas) > 1 or len({len(f) for f in flags_by.values()}) > 1:
        raise ValueError(f"Rows in {store.run_dir(run_id) / 'evals' / group} were computed on different test "
                         f"points ({', '.join(sorted(map(str, shas)))}): their per-example AND is meaningless.")
    models = {r["row"].get("checkpoint_sha") for r in records.values()} - {None}
    if len(models | ({checkpoint_sha} if checkpoint_sha and models else set())) > 1:
        raise ValueError(f"Rows in {store.run_dir(run_id) / 'evals' / group} were computed on different "
                         f"checkpoint files ({', '.join(sorted(models))}): their per-example AND is meaningless.")
    aa_warnings = [w for r in records.values() for w in r["row"].get("warnings", "").split(" | ") if w]
    suite = [check_monotone(flags_by, {a: EVAL_ATTACKS[a].strength for a in flags_by if a in EVAL_ATTACKS}),
             check_square(flags_by, WHITE_BOX, aa_warnings)]
    updated = []
    for attack, record in records.items():
        row = {**record["row"], **{f"guard_{g.name}": g.value for g in suite}}
        if checkpoint_sha is not None:
            row.setdefault("checkpoint_sha", checkpoint_sha)
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
    perturbations = [r["max_perturbation"] for r in updated if r.get("max_perturbation") is not None]
    if perturbations:  # the largest of the combined attacks' (rows older than the column have none)
        extra["max_perturbation"] = max(perturbations)
    if checkpoint_sha is not None:
        extra["checkpoint_sha"] = checkpoint_sha
    row = make_row(config, ckpt, ckpt_epoch, "worst", flags or [], eps, ecfg, 0.0, [], prov, extra)
    row["worst_of"] = ",".join(records)
    store.write_eval(run_id, group, "worst", row, flags or [])
    return row
