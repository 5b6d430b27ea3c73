"""The ``modelwatch`` command: a thin layer, each command calling one function that tests call too.

Each group of commands lives in its own module; this one assembles them and turns every
:class:`~schemas.errors.ModelwatchError` and usage error into one line on stderr.
"""

from __future__ import annotations

import typer

# typer vendors click since 0.2x; this one error has no public name.
from typer._click.exceptions import NoArgsIsHelpError

from schemas.errors import ModelwatchError
from services.cli import (
    acls,
    bench_experiments,
    broker,
    demo,
    deploy,
    keys,
    models,
    monitor,
    serve,
    simulate,
    status,
    tail,
    topics,
    train,
)
from services.cli import bench as bench_cli
from services.cli import report as report_cli
from services.cli.common import console, err

app = typer.Typer(
    name="modelwatch",
    help="Deploy, serve, watch and roll back recommender models over Kafka.\n\n"
    "Configuration: ./modelwatch.toml (or $MODELWATCH_CONFIG) and MODELWATCH_* variables; "
    "MODELWATCH_BOOTSTRAP names a cluster, otherwise the local broker on 127.0.0.1 is used.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(broker.app, name="broker")
app.add_typer(topics.app, name="topics")
app.add_typer(acls.app, name="acls")
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="models")
app.registered_commands += train.app.registered_commands
app.registered_commands += deploy.app.registered_commands
app.registered_commands += demo.app.registered_commands
app.registered_commands += simulate.app.registered_commands
app.registered_commands += status.app.registered_commands
app.registered_commands += tail.app.registered_commands
app.registered_commands += report_cli.app.registered_commands
app.registered_commands += monitor.app.registered_commands
app.registered_commands += serve.app.registered_commands
app.registered_commands += bench_cli.app.registered_commands
app.registered_commands += bench_experiments.app.registered_commands


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, print errors as one line, return the exit code."""
    try:
        result = app(args=argv, prog_name="modelwatch", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        console.print(exc.format_message())
        return 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err.print("modelwatch: aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: wrong flag, bad value, missing argument
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err.print(f"modelwatch: error: {message}{hint}", markup=False)
        return int(getattr(exc, "exit_code", 2))
    except ModelwatchError as exc:
        err.print(f"modelwatch: error: {exc}", markup=False)
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0
