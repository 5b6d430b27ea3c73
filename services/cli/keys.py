"""``modelwatch keys``: key pairs for the roles that sign (publisher, operator, monitor)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from services.cli.common import console, err
from services.registry.keys import generate as generate_key_pair

app = typer.Typer(
    help="Ed25519 key pairs for the roles that sign manifests and commands.", no_args_is_help=True
)


class RoleChoice(StrEnum):
    publisher = "publisher"
    operator = "operator"
    monitor = "monitor"


@app.command()
def generate(
    role: RoleChoice = typer.Option(..., "--role", help="Who will sign with it."),
    out: Path = typer.Option(..., "--out", metavar="PATH", help="Where the private key goes (mode 0600)."),
) -> None:
    """Write a new private key for ROLE to PATH (never over an existing file) and print the keyring line of
    its public key: add that line to the keyring of every replica and of the monitor."""
    public = generate_key_pair(role.value, out)
    err.print(f"private {role.value} key written to {out} (mode 0600); its keyring line:", markup=False)
    console.print(public.line(), markup=False)
