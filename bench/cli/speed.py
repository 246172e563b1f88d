"""`bench speed`: the speed benchmark's command (library: bench/training/speed.py)."""
from __future__ import annotations

import click

from bench.cli.common import device_option, usage_errors
from bench.config.catalog import DEFAULT_DATASET, DEFAULTS
from bench.config.names import UsageError, split_list


@click.command()
@click.option("--model", default=None, help="Default: the dataset's (cnn-bn for 28x28 data, resnet18 for 32x32).")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="Only its shape is used.")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True)
@click.option("--methods", default="at,gairat,mail,lrat", show_default=True)
@click.option("--train-attacks", default="pgd", show_default=True, help="Comma-separated; saa+cw allowed.")
@click.option("--eps", default=None, help="Default: the dataset's usual L-inf budget (0.1 for (fashion-)mnist, "
              "8/255 otherwise).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]))
@click.option("--steps", type=int, default=5, show_default=True, help="Timed iterations per figure.")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--eval-points", type=int, default=64, show_default=True)
@click.option("--eval-attacks", default="pgd20,aa", show_default=True, help="Evaluation attacks to time ('' for none).")
@click.option("--epoch-images", type=int, default=4096, show_default=True,
              help="Images in the real epoch used to measure the loop's overhead (0: skip it).")
@click.option("--channels-last", is_flag=True, help="NHWC memory layout.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (warm-up absorbs compiling).")
@device_option
@click.option("--json", "json_path", default=None, help="Also write the results as JSON here.")
@usage_errors
def speed(model, dataset, batch_size, methods, train_attacks, eps, precision, steps, warmup, eval_points, eval_attacks,
          epoch_images, channels_last, compile_model, device, json_path):
    """Measure plain vs adversarial training throughput, reweighting overhead and evaluation speed.

    \b
    Example:
      bench speed --model resnet18 --dataset cifar10 --batch-size 512 --precision bf16 --channels-last --json speed.json
      bench speed --model resnet18 --dataset cifar10 --batch-size 512 --precision bf16 --channels-last --compile
      bench speed --batch-size 32 --steps 2 --eval-points 16 --epoch-images 256   # tiny CI mode
    """
    from bench.config import parse_eps
    from bench.config.preflight import check_writable_file
    from bench.config.catalog import default_eps, default_model
    from bench.data import DATASETS
    from bench.evaluation.attacks import EVAL_ATTACKS
    from bench.models import MODELS
    from bench.config.names import lookup
    from bench.provenance import resolve_device
    from bench.training.speed import SpeedSettings, format_table, run_speed
    from bench.config.method_params import parse_train_attack
    from methods import canonical_method

    for name, value, low in (("batch-size", batch_size, 1), ("steps", steps, 1), ("warmup", warmup, 0),
                             ("eval-points", eval_points, 1), ("epoch-images", epoch_images, 0)):
        if value < low:  # --steps 0 divides by zero; --steps -1 timed nothing and printed negative speeds
            raise UsageError(f"--{name} must be >= {low}, got {value}.")
    if json_path is not None:
        check_writable_file(json_path, "--json")  # before the minutes of timing whose figures it holds
    info = lookup("dataset", dataset, DATASETS)
    eval_names = split_list(eval_attacks)
    for name in eval_names:
        lookup("eval attack", name, EVAL_ATTACKS)
    model = default_model(info.name) if model is None else model
    lookup("model", model, MODELS)
    settings = SpeedSettings(
        model=model, dataset=info.name, batch_size=batch_size, steps=steps, warmup=warmup,
        methods=tuple(canonical_method(m) for m in split_list(methods)),
        train_attacks=tuple(parse_train_attack(a) for a in split_list(train_attacks)),
        eps=parse_eps(eps) if eps else default_eps(info.name), precision=precision,
        eval_points=eval_points, eval_attacks=eval_names, epoch_images=epoch_images, channels_last=channels_last,
        compile=compile_model)
    click.echo(format_table(run_speed(settings, resolve_device(device), json_path)))
