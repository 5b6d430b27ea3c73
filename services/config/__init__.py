"""Configuration: one optional ``modelwatch.toml`` plus ``MODELWATCH_*`` environment overrides.

Precedence, highest first: arguments given in code (the CLI's flags), environment variables, the TOML
file, defaults. The file is ``$MODELWATCH_CONFIG`` if set, else ``./modelwatch.toml`` if present. Nested
sections are overridden with a double underscore: ``MODELWATCH_SERVE__BATCH_SIZE=500``.

Kafka security settings (SASL, SSL) are passed to every client: producers, consumers, the admin client and
the Faust worker.

Typos are errors, not silence: an unknown key or section in the file (``[[alert]]`` for ``[[alerts]]``) or
in a nested variable (``MODELWATCH_SERVE__BATCH_SIZ``) stops every command at start with one line naming
the key and where it came from; so do two alert rules with one name and a rule that could never fire or
never resolve. Other ``MODELWATCH_*`` variables that name no setting (``MODELWATCH_CONFIG``, the tests'
``MODELWATCH_TEST_BROKER_PORT``...) are not settings and are left alone: pydantic-settings only looks up
the variables of known settings at the top level.

The package, by concept (every name is re-exported here: import from :mod:`services.config`):

- :mod:`services.config.sections`: the sections of the settings (``[broker]``, ``[serve]``, ``[monitor]``,
  ``[[alerts]]``...), each refusing unknown keys;
- :mod:`services.config.toplevel`: :class:`Settings`, the top-level keys holding those sections, where they
  are read from (code, environment, TOML), and the model a process works on;
- :mod:`services.config.loading`: reading them once per process, a validation failure turned into one line
  naming the key and where it came from.
"""

from services.config.loading import load_settings, settings
from services.config.sections import (
    AlertmanagerSettings,
    AlertRule,
    BrokerSettings,
    ExperimentSettings,
    KeySettings,
    MonitorSettings,
    Section,
    ServeSettings,
)
from services.config.toplevel import MODEL_NAME, Settings, config_file

__all__ = [
    "MODEL_NAME",
    "AlertRule",
    "AlertmanagerSettings",
    "BrokerSettings",
    "ExperimentSettings",
    "KeySettings",
    "MonitorSettings",
    "Section",
    "ServeSettings",
    "Settings",
    "config_file",
    "load_settings",
    "settings",
]
