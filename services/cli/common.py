"""What every command group shares: settings from the environment, and one console."""

from __future__ import annotations

import typer
from rich.console import Console

from services.config import Settings, load_settings

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


#: ``--model NAME``: the model a command works on (its registry versions, its commands, its events).
ModelOption = typer.Option(
    None,
    "--model",
    metavar="NAME",
    help="The model to work on (one per recommendation surface: home, cart, ...) [default: model_name].",
)


def current_settings(model: str | None = None, **overrides: object) -> Settings:
    """Settings with the CLI's explicit flags on top (``None`` flags are not given), working on ``model``
    (``--model``; ``None``: the configured ``model_name``)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(**given).for_model(model)
