"""``modelwatch train``: fit a recommender, compare it with popularity, register a new version."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.cli.common import ModelOption, console, current_settings, err
from services.model.training import DEFAULT_SESSIONS, STEPS, train_version
from services.model.training import Progress as StepCallback
from services.sandbox.versions import train_on_world

app = typer.Typer()


@contextmanager
def step_progress(enabled: bool = True) -> Iterator[StepCallback]:
    """A progress bar over the training steps, on stderr so stdout stays clean for --json."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not enabled,
    )
    with bar:
        task = bar.add_task("training", total=len(STEPS))
        started: list[str] = []

        def advance(step: str) -> None:
            if started:
                bar.advance(task)
            started.append(step)
            bar.update(task, description=step)

        yield advance
        bar.update(task, completed=len(STEPS))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command(name="train")
def train_command(
    seed: int = typer.Option(0, "--seed", help="Seed of the generated world, its sessions and the model."),
    degrade: float = typer.Option(
        0.0,
        "--degrade",
        min=0.0,
        max=1.0,
        metavar="FRACTION",
        help="Shuffle the labels of this fraction of training rows: a deliberately worse model, for drills.",
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        metavar="PATH",
        help="Train on an interaction log (.npz or .csv; a path or fsspec URL) instead of generated data.",
    ),
    from_topics: bool = typer.Option(
        False,
        "--from-topics",
        help="Train on what the storefront logged: the predictions topic joined with the outcomes topic.",
    ),
    sessions: int = typer.Option(
        DEFAULT_SESSIONS, "--sessions", min=100, help="Generated sessions (20 candidates each)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the new version's manifest as one JSON document."
    ),
    model: str | None = ModelOption,
) -> None:
    """Train on generated data (default), a log file or the topics; register a new immutable version.

    The last 20% of sessions by time are held out; the version's held-out accuracy, precision, recall and
    F1 (counted as the monitor counts them) become the baseline the monitor compares against. With
    --model the version is that model's (and --from-topics reads that model's predictions).
    """
    settings = current_settings(model)
    with step_progress() as progress:
        if data is None and not from_topics:
            manifest = train_on_world(
                settings, seed=seed, degrade=degrade, sessions=sessions, progress=progress
            )
        else:
            manifest = train_version(
                settings, seed=seed, degrade=degrade, data=data, from_topics=from_topics, progress=progress
            )
    if as_json:
        typer.echo(orjson.dumps(manifest.as_dict()).decode())
        return
    console.print(f"registered {manifest.version} (parent {manifest.parent or 'none'})")
    console.print(
        f"trained on {manifest.data['rows']:,} interactions, {manifest.data['sessions']:,} sessions"
    )
    console.print(f"{'held-out':<10} {'model':>8} {'popularity':>11}")
    for name in ("accuracy", "precision", "recall", "f1"):
        value, base = manifest.metrics.get(name), manifest.baseline.get(name)
        console.print(f"{name:<10} {_fmt(value):>8} {_fmt(base):>11}")
