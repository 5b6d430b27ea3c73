"""``modelwatch tail``: the ops console, one line per event of the contract's topics."""

from __future__ import annotations

import os
import sys
from enum import StrEnum

import typer

from services.cli.common import console, current_settings, err
from services.ops.console import Filters, resolve_topics, tail

app = typer.Typer()


class StateChoice(StrEnum):
    firing = "firing"
    resolved = "resolved"


@app.command(name="tail")
def tail_command(
    topics: list[str] | None = typer.Argument(
        None,
        metavar="TOPIC",
        help="Topics to follow, with or without the prefix (rec.alerts or alerts) [default: every "
        "contract topic].",
        show_default=False,
    ),
    version: str | None = typer.Option(
        None, "--version", metavar="V", help="Only events of this model_version."
    ),
    state: StateChoice | None = typer.Option(None, "--state", help="Only alerts in this state."),
    instance: str | None = typer.Option(
        None, "--instance", metavar="I", help="Only predictions and acks/heartbeats of this service replica."
    ),
    from_beginning: bool = typer.Option(
        False, "--from-beginning", help="Start at the oldest retained event [default: only new events]."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print each event as one compact JSON line (bad events go to stderr)."
    ),
    max_events: int | None = typer.Option(
        None, "--max", min=1, metavar="N", help="Stop after N events shown."
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0,
        metavar="S",
        help="Stop after S seconds; with --max, exit 1 if fewer than N came.",
    ),
    bootstrap: str | None = typer.Option(None, "--bootstrap", help="Kafka cluster [default: settings]."),
    prefix: str | None = typer.Option(None, "--prefix", help="Topic prefix [default: settings, rec.]."),
    model: str | None = typer.Option(
        None,
        "--model",
        metavar="NAME",
        help="Only events of this model (events naming none are the default model's, model_name) "
        "[default: every model].",
    ),
) -> None:
    """Follow the contract's topics: one line per event, readable at a glance.

    Alerts are coloured by state and severity; deploy/rollback commands and the replicas' acks share
    columns so they read side by side; metrics are a compact row; dead letters are red. A message that
    is not JSON or breaks its schema is shown as BAD with the reason. Reads with assign(): joins no
    consumer group and commits nothing, so it never disturbs the services. Ctrl-C stops it.
    """
    settings = current_settings(bootstrap=bootstrap, topic_prefix=prefix)
    named = {"model": settings.for_model(model).model_name, "default_model": settings.default_model}
    try:
        resolve_topics(topics or [], settings.topic_prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TOPIC") from exc
    try:
        result = tail(
            settings,
            topics or [],
            filters=Filters(
                version=version,
                state=state.value if state else None,
                instance=instance,
                **(named if model is not None else {}),
            ),
            from_beginning=from_beginning,
            max_events=max_events,
            timeout=timeout,
            as_json=as_json,
            out=console,
            err=err,
        )
    except BrokenPipeError:
        # The reader (head, grep -m) has gone: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if max_events is not None and timeout is not None and not result.reached_max:
        err.print(f"modelwatch tail: {result.shown} of {max_events} events within {timeout:g}s")
        raise typer.Exit(1)
