"""Export a stored run for RobustBench: its state dict, the curated model_info file, a provenance file and a
README snippet.

`model_info/<dataset>/<Linf|L2>/<name>.json` is laid out and keyed as the files RobustBench curates in its
repository (`model_info/cifar10/Linf/*.json`, which `robustbench.utils.list_available_models` and the
leaderboard code read): CURATED_KEYS, in that order, eps as a string ("8/255", "0.5"), accuracies as percentage
strings with two decimals, "" for what is unknown. `provenance.json` holds what a reader needs to trust the
numbers and RobustBench has no key for: the threat model, eps as a float, the number of test points, accuracies
as floats in [0, 1] for every stored attack, the guards, the run's training choices, versions and checksum.
The numbers come from stored `bench eval` rows (natural and aa on the same points); nothing is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bench.data import DATASETS
from bench.config import format_eps
from bench.config.catalog import MODELS, default_eps, is_external
from bench.config.names import UsageError
from bench.store import Store, atomic_path, check_eval, load_torch, model_from_state, read_json, write_json
from bench.store_integrity import RunsRefused, refusal_lines, run_integrity

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # robustbench.model_zoo.enums.ThreatModel values: the folder names
BENCHMARK_DATASETS = ("cifar10", "cifar100")  # what robustbench.eval.benchmark can load, of ours

# The keys, in order, of the files RobustBench curates under model_info/<dataset>/<threat model>/ (verified
# against RobustBench/robustbench's model_info/cifar10/Linf/Addepalli2022Efficient_RN18.json,
# Wang2023Better_WRN-28-10.json, Bartoldson2024Adversarial_WRN-94-16.json and cifar10/L2/Wang2023Better_WRN-70-16.json).
# Not robustbench.utils.ModelInfo: that dataclass lacks "unreliable" and carries the corruptions_* keys, which
# only the corruptions files have. The optional "external" (a stronger attack's accuracy on a model marked
# unreliable) is left out: AutoAttack is the evaluation here.
CURATED_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # RobustBench's ids: Rebuffi2021Fixing_70_16_cutmix_ddpm


def _percent(acc: float) -> str:
    return f"{acc * 100:.2f}"  # as RobustBench's curated files write accuracies: "52.48", "0.00"


def check_name(name: str) -> str:
    """The model's name, which is also its file's name: letters, digits, '.', '_', '-', starting with a letter or
    digit, at most 100 characters (no path, no hidden file); UsageError otherwise."""
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"--name {name!r} is not a safe file name: use letters, digits, '.', '_' and '-', starting "
                         f"with a letter or digit, at most 100 characters (RobustBench's ids look like "
                         f"Rebuffi2021Fixing_70_16_cutmix_ddpm).")
    if name.endswith(".json"):
        raise UsageError(f"--name {name!r}: give the name without .json (the file is <name>.json).")
    return name


def default_name(config: dict[str, Any]) -> str:
    """lrat-bench_<method>_<train attack>_<run id's first 8 characters>, '+' of combined attacks as '-'."""
    train = config["train"]
    raw = f"lrat-bench_{train['method']}_{train['train_attack']}_{config['run_id'][:8]}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:100]


def _stored_rows(store: Store, run_id: str, checkpoint: str, threat_model: str, eps: float) -> dict[str, list[dict]]:
    """{attack: its rows} for this checkpoint, threat model and eps, over every stored group (point set)."""
    out: dict[str, list[dict]] = {}
    for path in sorted((store.run_dir(run_id) / "evals").glob("*/*.json")):
        row = check_eval(read_json(path), path)["row"]
        same = row["checkpoint"] == checkpoint and row["threat_model"] == threat_model
        if same and abs(row["eval_eps"] - eps) < 1e-9:
            out.setdefault(row["eval_attack"], []).append({**row, "group": path.parent.name})
    return out


def pick_group(store: Store, run_id: str, checkpoint: str, threat_model: str, eps: float | None) -> dict[str, dict]:
    """Rows (by attack) for this checkpoint, threat model and eps, each from the largest point set on which that
    attack ran (fp32 before tf32 on a tie); `worst` from AutoAttack's point set (its guards are AutoAttack's).
    Each row carries its `group`. UsageError when natural or aa was never evaluated there."""
    train = store.config(run_id)["train"]
    if eps is None:  # as bench.evaluation.evaluate.resolve_eval_eps: training is L-inf
        eps = train["eps"] if threat_model == "linf" else default_eps(train["dataset"], threat_model)
    by_attack = _stored_rows(store, run_id, checkpoint, threat_model, eps)
    if "natural" not in by_attack or "aa" not in by_attack:
        raise UsageError(
            f"Run {run_id} has no stored natural and aa rows for checkpoint {checkpoint}, {threat_model} eps "
            f"{eps:.6g}. Evaluate first: bench eval {run_id} --results {store.root} --eval-attacks natural,aa "
            f"--threat-model {threat_model} --eps {eps:.6g} --checkpoint {checkpoint}")
    rows = {a: max(rs, key=lambda r: (r["n_eval"], r.get("eval_precision", "fp32") == "fp32"))
            for a, rs in by_attack.items()}
    worst = [r for r in by_attack.get("worst", []) if r["group"] == rows["aa"]["group"]]
    rows.pop("worst", None)
    return {**rows, **({"worst": worst[0]} if worst else {})}


def unreliable_reasons(config: dict[str, Any], rows: dict[str, dict]) -> list[str]:
    """Why RobustBench's "unreliable" must be true for these numbers ([] when none): AutoAttack on fewer points
    than the test set (RobustBench's leaderboard uses all of it), clean and robust accuracy on different point
    sets, or an evaluation guard that flagged the AutoAttack row."""
    nat, aa = rows["natural"], rows["aa"]
    entry = DATASETS.get(config["train"]["dataset"])
    out = []
    if entry is not None and isinstance(aa.get("n_eval"), int) and aa["n_eval"] < entry.n_test:
        out.append(f"AutoAttack ran on {aa['n_eval']:,} of the {entry.n_test:,} test points")
    if (nat.get("n_eval"), nat.get("points_sha")) != (aa.get("n_eval"), aa.get("points_sha")):
        out.append(f"clean accuracy on {nat.get('n_eval', '?')} test points, AutoAttack on {aa.get('n_eval', '?')}: "
                   "different point sets")
    if aa.get("guards_flagged"):
        out.append(f"evaluation guards flagged the AutoAttack row: {aa['guards_flagged']}")
    return out


def model_info(config: dict[str, Any], rows: dict[str, dict], name: str, link: str = "", venue: str = "") -> dict:
    """The curated file's content: CURATED_KEYS in RobustBench's order. "reported" is the AutoAttack accuracy
    this export reports (RobustBench's "reported" is what the submission itself claims); "authors" is left ""
    (fill it in before a submission)."""
    train, nat, aa = config["train"], rows["natural"], rows["aa"]
    info = {
        "link": link, "name": name, "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": train["dataset"], "venue": venue,
        "architecture": MODELS[train["model"]].label if train["model"] in MODELS else train["model"],
        "eps": format_eps(aa["eval_eps"]), "clean_acc": _percent(nat["accuracy"]),
        "reported": _percent(aa["accuracy"]), "autoattack_acc": _percent(aa["accuracy"]),
        "footnote": f"AutoAttack standard (pyautoattack {aa.get('pyautoattack_version', '?')}, seed "
                    f"{aa['eval_seed']}) on {aa['n_eval']} test points ({aa.get('test_points', 'unknown order')})"
                    + (f"; clean accuracy on {nat['n_eval']} test points ({nat.get('test_points', 'unknown order')})"
                       if nat.get("n_eval", aa["n_eval"]) != aa["n_eval"] else "")
                    + f"; lrat-bench run {config['run_id']}.",
        "unreliable": bool(unreliable_reasons(config, rows)),
    }
    assert tuple(info) == CURATED_KEYS
    return info


def provenance(config: dict[str, Any], rows: dict[str, dict], model_sha256: str, model_info_path: str) -> dict:
    """What the curated file has no key for: threat model, eps as a float, n_examples and the run's record."""
    train, aa = config["train"], rows["aa"]
    worst = rows.get("worst", {})
    return {
        "model_info": model_info_path, "threat_model": THREAT_MODELS[aa["threat_model"]], "eps": aa["eval_eps"],
        "n_examples": aa["n_eval"],
        "run_id": config["run_id"], "method": train["method"], "method_params": train["method_params"],
        "train_attack": train["train_attack"], "train_eps": train["eps"], "model": train["model"],
        "epochs": train["epochs"], "seed": train["seed"], "checkpoint": aa["checkpoint"],
        "checkpoint_epoch": aa.get("checkpoint_epoch"), "eval_seed": aa["eval_seed"],
        "eval_batch_size": aa.get("eval_batch_size"), "test_points": aa.get("test_points"),
        "points_sha": aa.get("points_sha"),
        "eval_precision": aa.get("eval_precision"), "eval_tf32": aa.get("eval_tf32"),
        "accuracy": {a: r["accuracy"] for a, r in rows.items()},
        # each accuracy from the largest point set on which its attack ran: which one, and how many points
        "accuracy_n_eval": {a: r.get("n_eval") for a, r in rows.items()},
        "accuracy_points_sha": {a: r.get("points_sha") for a, r in rows.items()},
        "accuracy_group": {a: r.get("group") for a, r in rows.items()},
        "unreliable_reasons": unreliable_reasons(config, rows),
        "guards": {k: v for k, v in worst.items() if k.startswith("guard_")},
        "guards_flagged": worst.get("guards_flagged", ""),
        "versions": {k: aa.get(k) for k in ("bench_version", "torch_version", "pyautoattack_version",
                                             "robustbench_version", "git_commit")},
        "model_file": "model.pt", "model_sha256": model_sha256,
    }


def readme(info: dict[str, Any], prov: dict[str, Any], config: dict[str, Any]) -> str:
    train = config["train"]
    data = DATASETS[train["dataset"]]
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
                 f"threat_model={prov['threat_model']!r}, eps={prov['eps']!r}, n_examples={prov['n_examples']}, "
                 "batch_size=256, data_dir=\"./data\")\n```\n\n"
                 "robustbench's AutoAttack runs with seed=None (seeded from the clock), so its robust accuracy can "
                 "differ from the stored one by a point or two; the clean accuracy must match exactly.\n")
    else:
        check = (f"`robustbench.eval.benchmark` loads only cifar10, cifar100 and imagenet, not {train['dataset']}; "
                 "re-check with AutoAttack directly on the same points:\n\n"
                 "```python\nfrom pyautoattack import AutoAttack\nfrom bench.data import load_data, to_float\n\n"
                 f"test = load_data({train['dataset']!r}, test_subset={prov['n_examples']}).test\n"
                 "x, y = to_float(test.x), test.y\n"
                 f"adversary = AutoAttack(model, eps={prov['eps']!r}, norm={prov['threat_model']!r}, "
                 f"seed={prov['eval_seed']}, version=\"standard\")\n"
                 f"_, y_adv = adversary.run_standard_evaluation(x, y, batch_size={prov.get('eval_batch_size') or 256})"
                 "\n"
                 "print((y_adv == y).float().mean().item())\n```\n")
    return (f"# {info['name']}\n\n"
            f"| clean | AutoAttack | eps | threat model | n_examples | checkpoint |\n|---|---|---|---|---|---|\n"
            f"| {info['clean_acc']} % | {info['autoattack_acc']} % | {info['eps']} | {prov['threat_model']} | "
            f"{prov['n_examples']} | {prov['checkpoint']} (epoch {prov['checkpoint_epoch']}) |\n\n"
            f"Guards flagged: {prov['guards_flagged'] or 'none'}.\n\n"
            f"RobustBench's entry: `{prov['model_info']}` (its curated keys; fill in `authors`, `link` and `venue` "
            f"if they are empty); the run's record: `provenance.json`.\n\n"
            f"Load it:\n\n```python\n{load}```\n\n{check}")


def check_out(store: Store, out: str | Path) -> None:
    """Refuse an export folder inside the results store (the store would then hold files no run wrote: damaged)."""
    root, target = Path(store.root).resolve(), Path(out).resolve()
    if target == root or target.is_relative_to(root):
        raise UsageError(f"--out '{out}' lies inside the results store {store.root}: bench export never writes into "
                         f"a store (its files would damage it); choose a folder outside it.")


def check_usable(store: Store, run_id: str) -> None:
    """Refuse a run whose stored results may not be exported: unfinished or failed (UsageError, as `bench eval`
    refuses them), stale or damaged (RunsRefused naming the file and what repairs it)."""
    verdict = run_integrity(store, run_id)
    if verdict.verdict == "unfinished":
        raise UsageError(f"Run {run_id} has not finished (no DONE marker): bench export writes finished runs only; "
                         f"`bench run` finishes it (`bench status` shows where it stands).")
    if verdict.verdict == "failed":
        raise UsageError(f"Run {run_id} failed (FAILED marker: `bench status` shows why): nothing to export; "
                         f"`bench run` tries it again.")
    if not verdict.usable:
        raise RunsRefused("\n".join([f"bench export refuses run {run_id}: its stored results cannot be used.",
                                     *refusal_lines(store, {run_id: verdict})]))


def export_run(store: Store, run_id: str, out: str | Path, checkpoint: str = "best", threat_model: str = "linf",
               eps: float | None = None, name: str | None = None, link: str = "", venue: str = "") -> dict[str, Path]:
    """Write model.pt, model_info/<dataset>/<Linf|L2>/<name>.json, provenance.json and README.md under `out`, each
    atomically. Refused before anything is written: an unsafe name, an `out` inside the store, an external model,
    a run unfinished or failed (UsageError), stale or damaged (RunsRefused: bench/store_integrity.py), or one
    that lacks the stored natural/aa rows (UsageError)."""
    if name is not None:
        check_name(name)
    check_out(store, out)
    if is_external(train := store.config(run_id)["train"]):
        raise UsageError(f"Run {run_id} is an external model ('{train['method']}', bench.api.evaluate): bench export "
                         f"writes models the harness can rebuild and check; export it from where it was built (its "
                         f"state dict as evaluated is in {store.run_dir(run_id)}).")
    check_usable(store, run_id)
    rows = pick_group(store, run_id, checkpoint, threat_model, eps)
    config = store.config(run_id)
    name = name if name is not None else default_name(config)
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
    info = model_info(config, rows, name, link, venue)
    relative = Path("model_info", config["train"]["dataset"], THREAT_MODELS[rows["aa"]["threat_model"]], f"{name}.json")
    prov = provenance(config, rows, sha, relative.as_posix())
    out = Path(out)
    written = {"model": out / "model.pt", "model_info": out / relative, "provenance": out / "provenance.json",
               "readme": out / "README.md"}
    with atomic_path(written["model"]) as tmp:
        tmp.write_bytes(data)
    write_json(written["provenance"], prov)
    with atomic_path(written["model_info"]) as tmp:  # RobustBench's order and indent, not write_json's sorted keys
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    with atomic_path(written["readme"]) as tmp:
        tmp.write_text(readme(info, prov, config))
    return written
