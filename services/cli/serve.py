"""``modelwatch serve``: run one prediction-service replica until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from services.cli.common import current_settings
from services.serving import logs
from services.serving.service import serve as run_replica

app = typer.Typer()


@app.command()
def serve(
    instance: str | None = typer.Option(
        None,
        "--instance",
        metavar="ID",
        help="This replica's id, unique among replicas: it tags predictions and acks and names the "
        "transactional id [default: <host>-<pid>].",
    ),
    exactly_once: bool = typer.Option(
        False,
        "--exactly-once",
        help="Consume-transform-produce in Kafka transactions: no duplicate prediction after a crash or "
        "rebalance (readers use isolation.level=read_committed). Default: at-least-once.",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, metavar="N", help="Most requests per poll [default: serve.batch_size]."
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=1,
        max=65535,
        metavar="PORT",
        help="Serve Prometheus metrics on this port [default: serve.metrics_port, none].",
    ),
    models: list[str] | None = typer.Option(
        None,
        "--model",
        metavar="NAME",
        help="A model to serve; repeat it to serve several (--model home --model cart): each request goes "
        "to the model its `model` field names (absent: model_name) [default: model_name].",
    ),
) -> None:
    """Serve predictions: consume rec.requests in batches as the consumer group <prefix>serve, score them
    with the model version last commanded on rec.model-commands, and produce rec.predictions.

    The replica reads every command itself, loads and verifies each commanded version off the hot path,
    swaps it in between two batches and acknowledges on rec.model-events (activated or rejected, and a
    heartbeat every serve.heartbeat_s). Bad requests go to rec.requests.dlq with the reason. With no
    version ever deployed it waits for a deploy command. Logs are key=value lines on stderr. SIGTERM or
    Ctrl-C finishes the batch in hand, commits and exits.

    With several --model, each model has its own active version and follows only its own commands; a
    request for a model not served here is dead-lettered with the reason.
    """
    settings = current_settings()
    for name in models or []:
        settings.for_model(name)  # a bad name is one line now, not a failure in the replica
    changes = {
        k: v for k, v in {"batch_size": batch_size, "metrics_port": metrics_port}.items() if v is not None
    }
    if changes:
        settings = settings.model_copy(update={"serve": settings.serve.model_copy(update=changes)})
    logs.configure()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_replica(settings, instance=instance, exactly_once=exactly_once, stop=stop, models=models or ())
