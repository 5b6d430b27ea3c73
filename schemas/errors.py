"""Every error modelwatch raises, in one tree.

    ModelwatchError                 root: catch this to catch them all
    ├── ConfigError                 bad modelwatch.toml or MODELWATCH_* value
    ├── ContractError               an event breaks its JSON Schema (names the field)
    ├── BrokerError                 the local broker could not be fetched, started or reached
    ├── KafkaClientError            a Kafka client call failed (topic admin, produce, commit)
    ├── RegistryError               the model registry
    │   ├── VersionNotFound         no such version
    │   └── VerificationError       digest or signature mismatch: the artifact is not unpickled
    ├── ModelError                  training or scoring failed
    ├── CommandError                a model command is malformed, unsigned or forged
    ├── ServingError                a prediction replica cannot go on (fenced, fatal producer error)
    ├── ExperimentError             an experiment's comparison was fed values it cannot use
    └── BenchmarkError              a benchmark run could not finish (a contender died or stalled)

The CLI prints any of them as one line (``modelwatch: error: ...``) and exits 1.
"""

from __future__ import annotations


class ModelwatchError(Exception):
    """Root of every error modelwatch raises on purpose."""


class ConfigError(ModelwatchError):
    """A configuration value is missing or malformed."""


class ContractError(ModelwatchError):
    """An event does not match its schema.

    ``field`` is the dotted path of the offending field ("" for the whole event) and ``reason`` says why.
    """

    def __init__(self, event: str, field: str, reason: str) -> None:
        self.event = event
        self.field = field
        self.reason = reason
        where = field or "<event>"
        super().__init__(f"{event}: {where}: {reason}")


class BrokerError(ModelwatchError):
    """The local Kafka broker could not be fetched, started, stopped or reached."""


class KafkaClientError(ModelwatchError):
    """A Kafka client operation failed."""


class RegistryError(ModelwatchError):
    """The model registry could not store or load a version."""


class VersionNotFound(RegistryError):
    """The registry holds no such version."""


class VerificationError(RegistryError):
    """A version's artifact digest or manifest signature does not verify; nothing was unpickled."""


class ModelError(ModelwatchError):
    """Training or scoring failed."""


class CommandError(ModelwatchError):
    """A model command is malformed, unsigned or carries a forged signature."""


class ServingError(ModelwatchError):
    """A prediction replica cannot go on: another replica took its transactional id, or its producer hit a
    fatal error. Nothing past the last commit was acknowledged, so a restart loses nothing."""


class ExperimentError(ModelwatchError):
    """A shadow or canary comparison was given values it cannot use (unpaired, outside [0, 1]) or a
    state it cannot read."""


class BenchmarkError(ModelwatchError):
    """A ``modelwatch bench`` run could not finish: a process it measures exited or stalled. Its logs are
    kept, and the message says where."""
