"""``modelwatch topics``: create and list the contract's topics."""

from __future__ import annotations

import typer

from services.cli.common import console, current_settings
from services.kafka.topics import create_topics

app = typer.Typer(help="Create the contract's topics.", no_args_is_help=True)


@app.command()
def create(
    partitions: int = typer.Option(
        6, "--partitions", min=1, help="Partitions of requests, predictions and outcomes (co-partitioned)."
    ),
    replication: int | None = typer.Option(
        None,
        "--replication",
        min=1,
        help="Replication factor; 3 or more also sets min.insync.replicas=2 [default: the cluster's "
        "default.replication.factor and min.insync.replicas; `modelwatch broker start --nodes 3` sets 3 "
        "and 2].",
    ),
) -> None:
    """Create every topic under the prefix (idempotent)."""
    settings = current_settings()
    for state in create_topics(settings, partitions=partitions, replication=replication):
        word = "created" if state.created else "exists "
        console.print(f"{word} {state.name} ({state.partitions} partitions, replication {state.replication})")
