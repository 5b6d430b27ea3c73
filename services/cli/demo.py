"""``modelwatch demo``: the main job, end to end."""

from __future__ import annotations

import typer

from services.broker import LocalCluster
from services.cli.common import console, current_settings, err
from services.topics import create_topics

app = typer.Typer()


@app.command()
def demo() -> None:
    """Start the local broker (unless MODELWATCH_BOOTSTRAP names one), create the topics, say what is up."""
    settings = current_settings()
    if settings.bootstrap is None:
        bootstrap = LocalCluster(settings.broker).start(say=lambda m: err.print(m))
        console.print(f"broker: Kafka {settings.broker.kafka_version} at {bootstrap}")
    else:
        console.print(f"broker: using {settings.bootstrap}")
    for state in create_topics(settings):
        console.print(f"topic:  {state.name} ({state.partitions} partitions)")
