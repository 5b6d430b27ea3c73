"""What every command group shares: settings from the environment, and one console."""

from __future__ import annotations

from rich.console import Console

from services.config import Settings, load_settings

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def current_settings(**overrides: object) -> Settings:
    """Settings with the CLI's explicit flags on top (``None`` flags are not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(**given)
