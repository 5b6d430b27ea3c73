"""``modelwatch deploy`` and ``modelwatch rollback``: publish a verified version's command."""

from __future__ import annotations

import typer

from services.cli.common import console, current_settings
from services.deployment.orders import deploy, rollback

app = typer.Typer()

ReasonOption = typer.Option("", "--reason", metavar="TEXT", help="Why: recorded in the audit log.")


@app.command(name="deploy")
def deploy_command(
    version: str = typer.Argument(..., help="A registry version (see `modelwatch models list`)."),
    reason: str = ReasonOption,
) -> None:
    """Order every prediction service to activate VERSION.

    Refuses a version that is not in the registry or does not verify. The command is signed when
    MODELWATCH_SIGNING_KEY is set."""
    command = deploy(current_settings(), version, reason)
    console.print(f"deploy {command['model_version']} published ({command['command_id']})")


@app.command(name="rollback")
def rollback_command(
    to: str | None = typer.Option(
        None,
        "--to",
        metavar="V",
        help="Version to return to [default: the most recent healthy one before the current: not one "
        "rolled back for an alert, nor one no replica could load].",
    ),
    reason: str = ReasonOption,
) -> None:
    """Order every prediction service back to an earlier version (it must still verify)."""
    command = rollback(current_settings(), to, reason)
    console.print(f"rollback to {command['model_version']} published ({command['command_id']})")
