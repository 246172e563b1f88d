"""Export a stored run for RobustBench: its state dict, a `model_info` JSON and a README snippet.

`model_info.json` is RobustBench's `ModelInfo` (robustbench.utils) filled the way its `update_json` fills it
(accuracies as percentage strings rounded to 2 decimals, eps a float in pixel units), plus `threat_model` and
`n_examples` beside it, and an `lrat_bench` block with what a reader needs to trust the numbers: accuracies as
floats in [0, 1] for every stored attack, the guards, the run's training choices, versions and checksum.
The numbers come from stored `bench eval` rows (natural and aa on the same points); nothing is recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from bench.data import DATASETS
from bench.config.catalog import MODELS, default_eps
from bench.config.names import UsageError
from bench.store import Store, atomic_path, check_eval, load_torch, model_from_state, read_json, write_json

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
BENCHMARK_DATASETS = ("cifar10", "cifar100")  # what robustbench.eval.benchmark can load, of ours


def _percent(acc: float) -> str:
    return str(round(acc * 100, 2))  # exactly robustbench.utils.update_json's format


def pick_group(store: Store, run_id: str, checkpoint: str, threat_model: str, eps: float | None) -> dict[str, dict]:
    """Rows (by attack) of the stored group with natural and aa for this checkpoint, threat model and eps;
    the one with the most points when several sizes are stored."""
    train = store.config(run_id)["train"]
    if eps is None:  # as bench.evaluation.evaluate.resolve_eval_eps: training is L-inf
        eps = train["eps"] if threat_model == "linf" else default_eps(train["dataset"], threat_model)
    want = eps
    groups: dict[str, dict[str, dict]] = {}
    for path in sorted((store.run_dir(run_id) / "evals").glob("*/*.json")):
        row = check_eval(read_json(path), path)["row"]
        same = row["checkpoint"] == checkpoint and row["threat_model"] == threat_model
        if same and abs(row["eval_eps"] - want) < 1e-9:
            groups.setdefault(path.parent.name, {})[row["eval_attack"]] = row
    usable = [g for g in groups.values() if "natural" in g and "aa" in g]
    if not usable:
        raise UsageError(
            f"Run {run_id} has no stored natural and aa rows for checkpoint {checkpoint}, {threat_model} eps "
            f"{want:.6g}. Evaluate first: bench eval {run_id} --results {store.root} --eval-attacks natural,aa "
            f"--threat-model {threat_model} --eps {want:.6g} --checkpoint {checkpoint}")
    return max(usable, key=lambda g: g["natural"]["n_eval"])


def model_info(config: dict[str, Any], rows: dict[str, dict], model_sha256: str) -> dict[str, Any]:
    """RobustBench's ModelInfo fields, plus threat_model, n_examples and the lrat_bench block."""
    from bench.evaluation.autoattack_compat import install

    install()  # robustbench's package __init__ imports `autoattack`
    from robustbench.utils import ModelInfo

    train, nat, aa = config["train"], rows["natural"], rows["aa"]
    worst = rows.get("worst", {})
    info = dataclasses.asdict(ModelInfo(
        name=f"lrat-bench {train['method']} ({train['train_attack']}) run {config['run_id']}",
        additional_data=False, number_forward_passes=1, dataset=train["dataset"],
        architecture=MODELS[train["model"]].label if train["model"] in MODELS else train["model"], eps=aa["eval_eps"],
        clean_acc=_percent(nat["accuracy"]), autoattack_acc=_percent(aa["accuracy"]),
        footnote=f"AutoAttack standard (pyautoattack {aa.get('pyautoattack_version', '?')}, seed "
                 f"{aa['eval_seed']}) on {aa['n_eval']} test points ({aa.get('test_points', 'unknown order')})."))
    info["threat_model"] = THREAT_MODELS[aa["threat_model"]]
    info["n_examples"] = aa["n_eval"]
    info["lrat_bench"] = {
        "run_id": config["run_id"], "method": train["method"], "method_params": train["method_params"],
        "train_attack": train["train_attack"], "train_eps": train["eps"], "model": train["model"],
        "epochs": train["epochs"], "seed": train["seed"], "checkpoint": aa["checkpoint"],
        "checkpoint_epoch": aa.get("checkpoint_epoch"), "eval_seed": aa["eval_seed"],
        "eval_batch_size": aa.get("eval_batch_size"), "test_points": aa.get("test_points"),
        "points_sha": aa.get("points_sha"),
        "eval_precision": aa.get("eval_precision"), "eval_tf32": aa.get("eval_tf32"),
        "accuracy": {a: r["accuracy"] for a, r in rows.items()},
        "guards": {k: v for k, v in worst.items() if k.startswith("guard_")},
        "guards_flagged": worst.get("guards_flagged", ""),
        "versions": {k: aa.get(k) for k in ("bench_version", "torch_version", "pyautoattack_version",
                                             "robustbench_version", "git_commit")},
        "model_file": "model.pt", "model_sha256": model_sha256,
    }
    return info


def readme(info: dict[str, Any], config: dict[str, Any]) -> str:
    train = config["train"]
    data = DATASETS[train["dataset"]]
    lb = info["lrat_bench"]
    load = (f"import torch\nfrom bench.models import build_model\n\n"
            f"model = build_model({train['model']!r}, num_classes={data.num_classes}, in_channels={data.in_channels}, "
            f"image_size={data.image_size})\n"
            f"model.load_state_dict(torch.load(\"model.pt\", map_location=\"cpu\", weights_only=True))\n"
            f"model.eval()  # inputs in [0, 1], no normalisation outside the model; returns logits\n")
    if train["dataset"] in BENCHMARK_DATASETS:
        check = ("RobustBench re-check (the first `n_examples` test points, as stored here). robustbench 1.1.1 "
                 "imports `autoattack`, which PyPI ships only as `pyautoattack`: install the shim first.\n\n"
                 "```python\nfrom bench.evaluation.autoattack_compat import install\ninstall()\n"
                 "from robustbench.eval import benchmark\n\n"
                 f"clean, robust = benchmark(model, dataset={train['dataset']!r}, "
                 f"threat_model={info['threat_model']!r}, eps={info['eps']!r}, n_examples={info['n_examples']}, "
                 "batch_size=256, data_dir=\"./data\")\n```\n\n"
                 "robustbench's AutoAttack runs with seed=None (seeded from the clock), so its robust accuracy can "
                 "differ from the stored one by a point or two; the clean accuracy must match exactly.\n")
    else:
        check = (f"`robustbench.eval.benchmark` loads only cifar10, cifar100 and imagenet, not {train['dataset']}; "
                 "re-check with AutoAttack directly on the same points:\n\n"
                 "```python\nfrom pyautoattack import AutoAttack\nfrom bench.data import load_data, to_float\n\n"
                 f"test = load_data({train['dataset']!r}, test_subset={info['n_examples']}).test\n"
                 "x, y = to_float(test.x), test.y\n"
                 f"adversary = AutoAttack(model, eps={info['eps']!r}, norm={info['threat_model']!r}, "
                 f"seed={lb['eval_seed']}, version=\"standard\")\n"
                 f"_, y_adv = adversary.run_standard_evaluation(x, y, batch_size={lb.get('eval_batch_size') or 256})"
                 "\n"
                 "print((y_adv == y).float().mean().item())\n```\n")
    return (f"# {info['name']}\n\n"
            f"| clean | AutoAttack | eps | threat model | n_examples | checkpoint |\n|---|---|---|---|---|---|\n"
            f"| {info['clean_acc']} % | {info['autoattack_acc']} % | {info['eps']:.6g} | {info['threat_model']} | "
            f"{info['n_examples']} | {lb['checkpoint']} (epoch {lb['checkpoint_epoch']}) |\n\n"
            f"Guards flagged: {lb['guards_flagged'] or 'none'}.\n\n"
            f"Load it:\n\n```python\n{load}```\n\n{check}")


def export_run(store: Store, run_id: str, out: str | Path, checkpoint: str = "best", threat_model: str = "linf",
               eps: float | None = None) -> dict[str, Path]:
    """Write model.pt, model_info.json and README.md under `out`; UsageError (nothing written) if the run
    lacks the stored natural/aa rows."""
    rows = pick_group(store, run_id, checkpoint, threat_model, eps)
    config = store.config(run_id)
    source = store.run_dir(run_id) / f"{checkpoint}.pt"
    if not source.is_file():
        raise UsageError(f"Run {run_id} has no checkpoint file {source.name}.")
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # What is exported is what the rows describe, and loads with weights_only=True: a damaged or planted file
    # is refused here (StoreError naming it), never handed on as model.pt.
    model_from_state(config, load_torch(source, data=data), source)
    other = {r.get("checkpoint_sha") for r in rows.values()} - {None, sha[:16]}
    if other:
        raise UsageError(f"The stored rows of run {run_id} were computed on another {source.name} (checkpoint_sha "
                         f"{', '.join(sorted(other))}; the file's is {sha[:16]}). Evaluate it again first: bench eval "
                         f"{run_id} --results {store.root} --eval-attacks natural,aa --checkpoint {checkpoint}")
    info = model_info(config, rows, sha)
    out = Path(out)
    written = {"model": out / "model.pt", "model_info": out / "model_info.json", "readme": out / "README.md"}
    with atomic_path(written["model"]) as tmp:
        tmp.write_bytes(data)
    write_json(written["model_info"], info)
    with atomic_path(written["readme"]) as tmp:
        tmp.write_text(readme(info, config))
    return written
