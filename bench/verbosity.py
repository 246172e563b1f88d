"""The group's `-q`: progress and confirmations off, warnings and errors on, in this process and in the worker
processes it starts. Carried in the environment (as `--plugin` modules are: bench/plugins.py), because spawned
workers get neither the click context nor the parent's logging set-up. Torch-free."""
from __future__ import annotations

import logging
import os

ENV = "LRAT_BENCH_QUIET"  # "1" while a `bench -q ...` runs; set and cleared by the group, never read as an option


def set_quiet(quiet: bool) -> None:
    """Called by the group for every command: cleared when not asked, so one `-q` call does not silence the next
    one in the same process (CliRunner in tests, a notebook)."""
    if quiet:
        os.environ[ENV] = "1"
    else:
        os.environ.pop(ENV, None)


def is_quiet() -> bool:
    return os.environ.get(ENV) == "1"


def log_level() -> int:
    """The level a process logs at: warnings and errors only under `-q`, progress lines otherwise."""
    return logging.WARNING if is_quiet() else logging.INFO
