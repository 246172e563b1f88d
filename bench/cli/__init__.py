"""The `bench` command: thin glue that parses names into typed configs (the only place strings are parsed)
and hands them to the library.

The group lives here and adds the commands, one module each (run, eval_cmd, report, status, ls, export,
speed); what they share is in `common`. No command module imports this one, so there is no import cycle.
Heavy imports (torch) happen inside the commands that need them, so `bench --help`, `bench report`,
`bench status` and `bench run --dry-run` do not pay for torch through the CLI.
"""
from __future__ import annotations

import errno
import logging
import sys

import click

from bench.cli.common import DEFAULT_REPORTS, DEFAULT_RESULTS, usage_errors
from bench.cli.eval_cmd import eval_command
from bench.cli.export import export_command
from bench.cli.ls import list_components
from bench.cli.report import report as report_command
from bench.cli.run import run as run_command
from bench.cli.speed import speed as speed_command
from bench.cli.status import status as status_command
from bench.config.names import UsageError
from bench.plugins import load_plugins
from bench.verbosity import log_level, set_quiet

__all__ = ["DEFAULT_REPORTS", "DEFAULT_RESULTS", "main", "usage_errors"]


INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C (1 means "a cell failed")


class BenchGroup(click.Group):
    """The group, with the last net under every command: Ctrl-C exits 130 with a line, not click's "Aborted!"
    and 1 (the code of a failed cell); an OSError during the work (disk full, a folder made read-only
    meanwhile) exits 1 with its message instead of a traceback. Bad input is refused before that, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Nothing to clean: locks die with their holder, every stored file is written atomically, and a
            # cell that was cut short is neither DONE nor FAILED, so the next `bench run` resumes it.
            click.echo("\ninterrupted: what finished is stored; run the same command again to resume.", err=True)
            ctx.exit(INTERRUPTED)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # click's own handling of `bench ... | head`
                raise
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None


DISTRIBUTION = "lrat-bench"  # pyproject.toml's [project] name: `bench --version` reads its installed metadata


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors: no progress, no list of files written, no summary (queries such as "
                   "ls, status, --dry-run, speed's table and --json documents still print what they are asked for).")
@click.version_option(package_name=DISTRIBUTION, prog_name="bench",
                      help="Print the installed lrat-bench version and exit.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Load components from a module that is not installed (a module name or a .py file with a "
                   "LRAT_BENCH dict; repeatable). Installed plugins (entry points) load without it.")
def main(quiet: bool, plugins: tuple[str, ...]) -> None:
    """lrat-bench: train and evaluate adversarial-training methods under a train-attack x eval-attack matrix.

    \b
    Example:
      bench run --methods at,irat,lrat --train-attack pgd
      bench report
    """
    set_quiet(quiet)  # before anything logs: workers started from here read it too
    logging.basicConfig(level=log_level(), format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(log_level())  # basicConfig configures once per process; -q holds for every call
    try:
        load_plugins(plugins)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


for _command, _name in ((run_command, "run"), (report_command, "report"), (list_components, "ls"),
                        (speed_command, "speed"), (status_command, "status"), (eval_command, "eval"),
                        (export_command, "export")):
    main.add_command(_command, name=_name)
