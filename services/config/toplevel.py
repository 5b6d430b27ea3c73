"""The settings as a whole: the top-level keys (Kafka, its security, the registry, the model), the sections
under them, where they are read from and in which order, and the model a process works on."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.errors import ConfigError
from services.config.sections import (
    AlertmanagerSettings,
    AlertRule,
    BrokerSettings,
    ExperimentSettings,
    KeySettings,
    MonitorSettings,
    ServeSettings,
    _data_home,
)

#: A model's name: it names registry directories, consumer groups and the monitor's app id.
MODEL_NAME = r"^[A-Za-z0-9._-]{1,100}$"


def config_file() -> Path | None:
    explicit = os.environ.get("MODELWATCH_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"MODELWATCH_CONFIG names {path}, which is not a file")
        return path
    local = Path("modelwatch.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Everything configurable, from one place."""

    model_config = SettingsConfigDict(
        env_prefix="MODELWATCH_",
        env_nested_delimiter="__",
        # An unknown key is a typo: refused, with its name (see load_settings). Unknown MODELWATCH_* variables
        # at the top level are not seen at all: the environment source only looks up known settings.
        extra="forbid",
    )

    bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; unset means the local broker on 127.0.0.1."
    )
    topic_prefix: str = Field("rec.", pattern=r"^[A-Za-z0-9._-]*$")
    registry: str = Field(
        default_factory=lambda: str(_data_home() / "registry"),
        description="Model registry: a directory or any fsspec URL (s3://, hdfs://, memory://).",
    )
    signing_key: SecretStr | None = Field(
        None, description="Legacy: one shared HMAC-SHA256 key for manifests and commands (see keys)."
    )
    model_name: str = Field(
        "recommender",
        pattern=MODEL_NAME,
        description="The model this process works on (commands, registry, monitor; `--model` overrides it), "
        "and the default model: the one a request, prediction or command without a `model` field is for.",
    )
    #: Where the code of users' own models lives: each directory goes first on ``sys.path`` just before a
    #: version is unpickled (after it verified), in replicas and the CLI alike. In the environment: one
    #: string, directories joined by the OS path separator (``:``), as ``PYTHONPATH``.
    model_path: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Directories holding the modules of users' own models."
    )

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None

    broker: BrokerSettings = Field(default_factory=lambda: BrokerSettings())
    keys: KeySettings = Field(default_factory=lambda: KeySettings())
    serve: ServeSettings = Field(default_factory=lambda: ServeSettings())
    monitor: MonitorSettings = Field(default_factory=lambda: MonitorSettings())
    experiments: ExperimentSettings = Field(default_factory=lambda: ExperimentSettings())
    alerts: list[AlertRule] = Field(default_factory=list)
    alertmanager: AlertmanagerSettings = Field(default_factory=lambda: AlertmanagerSettings())

    @field_validator("model_path", mode="before")
    @classmethod
    def _split_model_path(cls, value: Any) -> Any:
        if isinstance(value, str):  # from MODELWATCH_MODEL_PATH: "dir1:dir2", as PYTHONPATH
            return [part for part in value.split(os.pathsep) if part]
        return value

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Settings:
        twice = sorted(name for name, n in Counter(r.name for r in self.alerts).items() if n > 1)
        if twice:
            # Alert ids and alert states are keyed by the rule's name: two rules would share them.
            raise ValueError(f"two alert rules are named {', '.join(map(repr, twice))}: names must be unique")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    #: The configured default model, kept when ``--model`` points ``model_name`` elsewhere (``for_model``).
    _default_model: str | None = PrivateAttr(None)

    @property
    def default_model(self) -> str:
        """The model that events without a ``model`` field belong to: the configured ``model_name``."""
        return self._default_model or self.model_name

    def for_model(self, name: str | None) -> Settings:
        """These settings working on model ``name`` (``None``: unchanged), the default model kept."""
        if name is None or name == self.model_name:
            return self
        if not re.fullmatch(MODEL_NAME, name):
            raise ConfigError(f"model name {name!r}: use 1-100 letters, digits, '.', '_' or '-'")
        copy = self.model_copy(update={"model_name": name})
        copy._default_model = self.default_model
        return copy

    def model_of(self, event: dict[str, Any]) -> str:
        """The model an event (request, prediction, command, model event...) is for: its ``model`` field, or
        the default model when it has none (events written before models were named)."""
        named = event.get("model")
        return named if isinstance(named, str) else self.default_model

    @property
    def monitor_app_id(self) -> str:
        """The monitor's Faust app id (also its consumer group and its internal topics' prefix):
        ``<prefix>monitor`` for the default model, ``<prefix>monitor-<model>`` for another."""
        base = f"{self.topic_prefix}monitor"
        return base if self.model_name == self.default_model else f"{base}-{self.model_name}"

    @property
    def monitor_route_group(self) -> str:
        """The consumer group in which the monitor's workers read the source topics (predictions, shadow
        predictions, outcomes): ``<monitor app id>-route``."""
        return f"{self.monitor_app_id}-route"

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap or f"127.0.0.1:{self.broker.port}"

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}{suffix}"
