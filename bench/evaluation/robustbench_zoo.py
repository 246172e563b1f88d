"""RobustBench's model zoo, offline: a zoo model built by `robustbench.utils.load_model` from a checkpoint already
on disk, for `bench eval --robustbench NAME --model-dir DIR` and `bench.api.robustbench_model`.

load_model reads `<model_dir>/<dataset>/<Linf|L2>/<NAME>.pt` (an ensemble: `<NAME>.pt_m0.pt`, `_m1.pt`, ...),
downloading it first when it is missing. The harness never goes to the network behind the user's back: a
missing file is refused with the path it expects and how to get it, before load_model is called. Models that
RobustBench fetches through timm's hub (some XCiT entries) have no such file and are refused the same way.
The checkpoint is read by load_model's own torch.load, which on torch >= 2.6 loads tensors only (a pickle
payload is refused, never run).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config.names import UsageError, suggest

if TYPE_CHECKING:
    import torch

ZOO_DATASETS = ("cifar10", "cifar100")  # RobustBench's benchmarks that are datasets here (ImageNet is not)
ZOO_THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # ours -> RobustBench's spelling (its folder names)


def zoo_threat_model(threat_model: str) -> str:
    key = str(threat_model).strip().lower()
    if key not in ZOO_THREAT_MODELS:
        raise UsageError(f"RobustBench's zoo has the threat models {', '.join(ZOO_THREAT_MODELS.values())} here, "
                         f"not '{threat_model}'.")
    return ZOO_THREAT_MODELS[key]


def zoo_entries(dataset: str, threat_model: str) -> dict[str, dict[str, Any]]:
    """The zoo's {name: entry} for a dataset and threat model (imports robustbench: torch, timm)."""
    if dataset not in ZOO_DATASETS:
        raise UsageError(f"RobustBench's zoo covers {', '.join(ZOO_DATASETS)} among this harness's datasets, not "
                         f"'{dataset}'.")
    from bench.evaluation.autoattack_compat import install

    install()  # where lrat-bench's .pth is absent (a checkout on PYTHONPATH): before robustbench is imported
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(zoo_threat_model(threat_model))]


def checkpoint_paths(name: str, model_dir: str | Path, dataset: str, threat_model: str,
                     entry: dict[str, Any]) -> list[Path]:
    """The files load_model reads for this entry: <NAME>.pt, or one <NAME>.pt_m<i>.pt per ensemble member."""
    path = Path(model_dir) / dataset / zoo_threat_model(threat_model) / f"{name}.pt"
    ids = entry.get("gdrive_id")
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def _is_timm_model(name: str, dataset: str, threat_model: str) -> bool:
    import timm  # robustbench's dependency: the name load_model checks first

    return timm.is_model(f"{name.lower().replace('-', '_')}_{dataset}_{zoo_threat_model(threat_model).lower()}")


def robustbench_model(name: str, model_dir: str | Path, dataset: str = "cifar10",
                      threat_model: str = "linf") -> torch.nn.Module:
    """The zoo model `name` for `dataset` ("cifar10", "cifar100") and `threat_model` ("linf"/"Linf", "l2"/"L2"),
    built by robustbench.utils.load_model from its checkpoint in `model_dir` (RobustBench's layout, above), in
    eval mode, inputs in [0, 1], returning logits. UsageError, before anything is read, for a name not in the
    zoo (with a suggestion), a missing checkpoint (naming the path), or a model only timm's hub provides."""
    entries = zoo_entries(dataset, threat_model)
    if name not in entries:
        raise UsageError(f"'{name}' is not in RobustBench's {dataset} {zoo_threat_model(threat_model)} zoo."
                         f"{suggest(name, list(entries))}")
    if _is_timm_model(name, dataset, threat_model) or entries[name].get("gdrive_id") is None:
        raise UsageError(f"RobustBench loads '{name}' through timm's model hub, not from a file in --model-dir: "
                         f"it cannot be evaluated offline here.")
    missing = [p for p in checkpoint_paths(name, model_dir, dataset, threat_model, entries[name]) if not p.is_file()]
    if missing:
        raise UsageError(f"No checkpoint of '{name}' at {', '.join(map(str, missing))} (RobustBench's layout: "
                         f"MODEL_DIR/{dataset}/{zoo_threat_model(threat_model)}/{name}.pt). Fetch it where there is "
                         f"network, with robustbench.utils.load_model('{name}', model_dir=..., dataset='{dataset}', "
                         f"threat_model='{zoo_threat_model(threat_model)}'), and copy it there; nothing is downloaded "
                         f"here.")
    from robustbench.utils import load_model

    try:
        return load_model(model_name=name, model_dir=str(model_dir), dataset=dataset,
                          threat_model=zoo_threat_model(threat_model)).eval()
    except Exception as exc:  # noqa: BLE001 - torch.load's refusals, a state dict that does not fit: say which file
        text = " ".join(str(exc).split())[:600]
        raise UsageError(f"RobustBench could not load '{name}' from {model_dir}: {type(exc).__name__}: {text}") from None
