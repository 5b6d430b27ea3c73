"""``modelwatch acls``: bind the storefront, service, monitor and operator principals to their topics."""

from __future__ import annotations

import typer

from services.cli.common import console, current_settings
from services.kafka.acls import apply_acls

app = typer.Typer(help="Kafka ACLs for a secure (SASL/SCRAM) cluster.", no_args_is_help=True)


@app.command()
def apply() -> None:
    """Create the ACLs for the topic prefix (idempotent). Run with a super user's credentials
    (MODELWATCH_SECURITY_PROTOCOL=SASL_PLAINTEXT, MODELWATCH_SASL_MECHANISM=SCRAM-SHA-256,
    MODELWATCH_SASL_USERNAME=admin, MODELWATCH_SASL_PASSWORD=...)."""
    settings = current_settings()
    count = apply_acls(settings)
    console.print(
        f"{count} ACLs in place for {settings.topic_prefix}* (storefront may not write model-commands)"
    )
