"""What produced a result: versions, commit, device, precision flags. Recorded in every config and row."""
from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata

import torch

import bench
from bench.store import git_commit


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, str]:
    return {
        "bench_version": bench.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "pyautoattack_version": _version("pyautoattack"),
        "robustbench_version": _version("robustbench"),
        "device": device_name(device),
        "tf32": str(torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else False),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from bench.config.names import UsageError
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device here.")
    return torch.device(name)
