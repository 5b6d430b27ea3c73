"""``modelwatch simulate``: play the storefront."""

from __future__ import annotations

import signal
import threading

import typer
from rich.live import Live
from rich.text import Text

from services.cli.common import console, current_settings
from services.sandbox.storefront import SimulationPlan, SimulationStats, simulate

app = typer.Typer()


@app.command("simulate")
def simulate_command(
    rate: float = typer.Option(200.0, "--rate", min=0.1, help="Requests per second (Poisson arrivals)."),
    duration: float = typer.Option(60.0, "--duration", min=0.1, help="Seconds of requests to produce."),
    drift_at: float | None = typer.Option(
        None, "--drift-at", min=0, help="Shift the users' tastes this many seconds into the run."
    ),
    seed: int = typer.Option(1, "--seed", help="Seed of the sessions and purchases."),
    world_seed: int = typer.Option(
        0, "--world-seed", help="Seed of the world (the one the model trained on)."
    ),
    malformed: float = typer.Option(
        0.0, "--malformed", min=0.0, max=1.0, help="Share of deliberately malformed requests (for the DLQ)."
    ),
    k: int | None = typer.Option(
        None, "--k", min=1, help="Items to ask for per request [default: the service's]."
    ),
) -> None:
    """Produce storefront requests at a steady rate and, after a short delay, the outcomes (what the users
    really bought, drawn from the world's true tastes, never from the model). Ctrl-C stops early; pending
    outcomes are still delivered."""
    settings = current_settings()
    plan = SimulationPlan(
        rate=rate,
        duration_s=duration,
        drift_at_s=drift_at,
        seed=seed,
        world_seed=world_seed,
        malformed=malformed,
        k=k,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def line(stats: SimulationStats) -> Text:
        return Text(
            f"requests {stats.requests:>8,}  outcomes {stats.outcomes:>8,}  purchases {stats.purchases:>8,}  "
            f"malformed {stats.malformed:>5,}  pending {stats.pending_outcomes:>6,}"
        )

    with Live(line(SimulationStats()), console=console, transient=False, auto_refresh=False) as live:
        stats = simulate(settings, plan, stop=stop, on_progress=lambda s: live.update(line(s), refresh=True))
    console.print(
        f"done: {stats.requests:,} requests and {stats.outcomes:,} outcomes to {settings.topic_prefix}*"
    )
