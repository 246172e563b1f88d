"""What the commands share: the UsageError -> exit 2 decorator, the options several commands take, the
defaults of `bench run`'s matrix flags (which `bench status --config` fills a matrix file's gaps with), and
which parameters the user actually typed. Torch-free, and imports no command module: every command imports it.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import click

from bench.config.catalog import DEFAULT_DATASET, DEFAULT_EVAL_ATTACKS, DEFAULTS
from bench.config.names import UsageError

DEFAULT_RESULTS = "results"
DEFAULT_REPORTS = "reports"

# `bench run`'s matrix flags and their defaults (the keys are matrix_file.MATRIX_PARAMS less the file-only `rows`).
# The run command's options take their defaults from here, and `bench status --config` merges a matrix file
# over the same values, so both see the same cells; tests/test_layout.py checks that the two agree.
RUN_DEFAULTS: dict[str, Any] = {
    "methods": "at",
    "train_attack": "pgd",
    "method_params": (),
    "dataset": DEFAULT_DATASET,
    "model": None,  # the dataset's default model (catalog.default_model)
    "epochs": DEFAULTS.epochs,
    "batch_size": DEFAULTS.batch_size,
    "lr": None,  # the model's default learning rate (catalog.default_lr)
    "lr_scale": "none",
    "precision": "fp32",
    "weight_decay": DEFAULTS.weight_decay,
    "eps": None,  # the dataset's usual budget (catalog.default_eps)
    "attack_steps": DEFAULTS.attack_steps,
    "saa_steps": DEFAULTS.saa_steps,
    "step_size": None,  # eps / 4
    "seeds": "0",
    "eval_attacks": ",".join(DEFAULT_EVAL_ATTACKS),
    "threat_model": "linf",
    "eval_eps": None,  # the training eps (linf)
    "train_subset": None,
    "val_size": DEFAULTS.val_size,
    "test_subset": None,
    "eval_batch_size": DEFAULTS.eval_batch_size,
    "eval_precision": "fp32",
    "checkpoints": ",".join(DEFAULTS.checkpoints),
}


def usage_errors(fn):
    """Turn the library's UsageError into click's (exit code 2, message, nothing run), and a damaged or refused
    store file (bench.store.StoreError) into exit code 1 with the file and the reason, not a traceback."""
    from bench.store import StoreError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
        except StoreError as exc:
            raise click.ClickException(store_error_message(exc)) from None
    return wrapper


def store_error_message(exc) -> str:
    """One line for a StoreError: the file, the reason, and what to do."""
    if exc.kind == "unsafe":
        return (f"refused store file {exc} (never loaded; if you did not put it there, delete it and `bench run` "
                "trains the cell again)")
    return (f"damaged store file {exc} (`bench status` lists every damaged cell; `bench run` with the cell's "
            "settings repairs it)")


def given_params(ctx: click.Context) -> set[str]:
    """The parameters the user actually typed (or set through the environment): these override the file."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


# ---- options several commands take -------------------------------------------------------------------------

def results_option(fn):
    return click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results store directory.")(fn)


def data_dir_option(fn):
    # exists=True: a mistyped folder is refused (exit 2), not searched in vain and then downloaded into.
    return click.option("--data-dir", default=None, type=click.Path(exists=True, file_okay=False),
                        help="Where datasets live (also $BENCH_DATA_DIR).")(fn)


def device_option(fn):
    return click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))(fn)


def threat_model_option(help: str | None = None):
    # case-insensitive: RobustBench writes Linf and L2 (its folders, --robustbench); the value is linf or l2
    return click.option("--threat-model", type=click.Choice(["linf", "l2"], case_sensitive=False),
                        default=RUN_DEFAULTS["threat_model"], show_default=True, help=help)


def eval_batch_size_option(help: str | None = None):
    return click.option("--eval-batch-size", type=int, default=DEFAULTS.eval_batch_size, show_default=True, help=help)


def eval_precision_option(help: str):
    return click.option("--eval-precision", type=click.Choice(["fp32", "tf32"]), default=RUN_DEFAULTS["eval_precision"],
                        show_default=True, help=help)


def eval_attacks_option(help: str | None = None):
    return click.option("--eval-attacks", default=RUN_DEFAULTS["eval_attacks"], show_default=True, help=help)


def json_option(what: str):
    """--json: `what` as one JSON document on stdout instead of the text (shapes: docs/cli.md, "JSON output")."""
    return click.option("--json", "as_json", is_flag=True,
                        help=f"Print {what} as one JSON document on stdout (shape: docs/cli.md); logs go to stderr.")


def say(message: str = "", err: bool = False) -> None:
    """A line of progress, a file written or a summary: silenced by the group's -q (bench/verbosity.py), which
    warnings and errors are not (they go through click.echo(..., err=True) or exceptions)."""
    from bench.verbosity import is_quiet

    if not is_quiet():
        click.echo(message, err=err)


def echo_json(document: Any) -> None:
    """One JSON document on stdout: strict JSON (no NaN or Infinity, which JSON parsers refuse), keys in the
    documented order."""
    click.echo(json.dumps(document, indent=1, allow_nan=False))
