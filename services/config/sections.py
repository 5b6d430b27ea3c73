"""The sections of the settings: one model per ``[table]`` of ``modelwatch.toml`` (and per
``MODELWATCH_<SECTION>__*`` variable), each refusing keys it does not know, and the ``[[alerts]]`` rules.

:class:`~services.config.toplevel.Settings` holds one of each.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "modelwatch"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelwatch"


class Section(BaseModel):
    """A section of the settings: an unknown key in it is an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")


class BrokerSettings(Section):
    """The local broker that ``modelwatch broker start`` runs when no cluster is named."""

    port: int = Field(9092, ge=1, le=65535, description="Client port of the first node.")
    data_dir: Path = Field(default_factory=lambda: _data_home() / "broker")
    jar_cache: Path = Field(default_factory=lambda: _cache_home() / "kafka")
    kafka_version: str = "3.9.1"
    heap: str = Field("512m", description="JVM heap per node (-Xmx).")


class KeySettings(Section):
    """Public-key signatures (services/registry/keys.py): the keyring every verifier holds, and the private
    key of the role this process runs as. With no keyring, signatures are not checked."""

    keyring_file: Path | None = Field(
        None, description="Keyring file: lines of '<role> <key-id> <base64 public key>'."
    )
    keyring: list[str] = Field(
        default_factory=list, description="Keyring lines given inline, added to the file's."
    )
    publisher_key: Path | None = Field(None, description="Private key that signs manifests (train).")
    operator_key: Path | None = Field(None, description="Private key that signs the CLI's commands.")
    monitor_key: Path | None = Field(None, description="Private key that signs the monitor's commands.")


class ServeSettings(Section):
    """The prediction service."""

    batch_size: int = Field(500, ge=1, le=100_000, description="Most requests taken per poll.")
    poll_timeout_s: float = Field(0.05, gt=0, description="How long one poll waits for the first message.")
    gather_ms: int = Field(
        25,
        ge=0,
        le=1000,
        description="How long the broker may hold a fetch to gather a batch (0: answer at once).",
    )
    gather_bytes: int = Field(
        4096,
        ge=1,
        description="A held fetch is answered once it has this much (about eight 20-candidate requests).",
    )
    default_k: int = Field(5, ge=1, description="Items recommended when a request gives no k.")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between a replica's heartbeat events.")
    metrics_port: int | None = Field(None, description="Prometheus port; none serves no metrics.")
    commit_interval_ms: int = Field(
        1000, ge=10, description="At-least-once: how often offsets confirmed by the broker are committed."
    )
    transaction_ms: int = Field(
        100, ge=1, description="--exactly-once: how long one transaction gathers batches before committing."
    )
    transaction_timeout_ms: int = Field(
        10_000, ge=1000, description="A killed replica's open transaction blocks its partitions this long."
    )
    session_timeout_ms: int = Field(
        10_000, ge=1000, description="A replica silent this long is dead: its partitions move to the others."
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="Longest one batch may take (a slow model) before the group evicts."
    )
    retry_max_s: float = Field(10.0, gt=0, description="Longest wait between attempts to reach the broker.")


class MonitorSettings(Section):
    """The Faust monitor."""

    label_window_s: float = Field(1800.0, gt=0, description="How long a prediction waits for its outcome.")
    unlabelled: Literal["no_purchase", "drop"] = "no_purchase"
    count_window: int = Field(1000, ge=1, description="Labelled requests in the count window.")
    time_window_s: int = Field(300, ge=1, description="Seconds of event time in the time window.")
    emit_every_n: int = Field(200, ge=1, description="Emit metrics every N labelled requests per version...")
    emit_every_s: float = Field(5.0, gt=0, description="...or every S seconds, whichever comes first.")
    rollback_cooldown_s: float = Field(60.0, ge=0)
    batch_size: int = Field(
        1000,
        ge=1,
        description="Most events an agent takes per batch (stream.take), and the most fetched messages the "
        "source reader holds per partition.",
    )
    batch_within_s: float = Field(0.1, gt=0, description="How long a batch waits to fill.")
    commit_interval_s: float = Field(1.0, gt=0, description="Offset commits; less is redone after a crash.")
    session_timeout_s: float = Field(30.0, ge=6, description="A dead worker's partitions move after this.")
    drift_delta: float | None = Field(None, gt=0, lt=1, description="ADWIN's delta; unset: no drift warning.")
    web_port: int | None = Field(None, ge=1, le=65535, description="Faust's web server; unset: none.")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Prometheus metrics, /healthz and /readyz; unset: none."
    )
    data_dir: Path = Field(default_factory=lambda: _data_home() / "monitor")
    log_level: str = "info"
    debug_loggers: list[str] = Field(
        default_factory=list,
        description="Loggers logged at DEBUG whatever log_level says; aiokafka.consumer.fetcher and "
        "faust.tables.recovery tell what a table recovery fetched and what it received.",
    )
    dedupe_horizon: int = Field(
        50_000, ge=0, description="Recent requests per version remembered, so a replay is not counted twice."
    )
    # Event time (the storefront's clock) is checked against the broker time of the message carrying it.
    future_tolerance_s: float = Field(
        300.0, ge=0, description="An event's ts may be this far after its message's broker timestamp."
    )
    past_tolerance_s: float | None = Field(
        None,
        ge=0,
        description="...and this far before it (requests, outcomes); unset: the label window, "
        "at least an hour. Beyond either bound the event is dead-lettered and moves no clock.",
    )
    out_of_order_s: float | None = Field(
        None,
        ge=0,
        description="How far out of event-time order an event may arrive and still count; unset: "
        "the future tolerance or the label window, whichever is shorter.",
    )
    idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A source partition without new events this long, and read to its end, no longer "
        "holds the join's clocks back; with every outcome partition idle, predictions expire on the "
        "monitor's clock less the past tolerance.",
    )
    prediction_wait_s: float = Field(
        86_400.0,
        gt=0,
        description="How long an outcome waits for a late prediction (a serving outage), "
        "and how far behind its message a prediction's request_ts may be.",
    )

    @property
    def past_tolerance(self) -> float:
        if self.past_tolerance_s is not None:
            return self.past_tolerance_s
        return max(self.label_window_s, 3600.0)

    @property
    def out_of_order(self) -> float:
        if self.out_of_order_s is not None:
            return self.out_of_order_s
        return min(self.future_tolerance_s, self.label_window_s)


class AlertmanagerSettings(Section):
    """Where the monitor posts its alerts (Alertmanager's v2 API); no url: nowhere."""

    url: str | None = Field(
        None, pattern=r"^https?://", description="Alertmanager's base URL, e.g. http://alertmanager:9093."
    )
    resend_s: float = Field(
        60.0, gt=0, description="Firing alerts are posted again this often (their endsAt: 4 times ahead)."
    )
    timeout_s: float = Field(5.0, gt=0, description="Longest wait for one post.")
    retry_max_s: float = Field(30.0, gt=0, description="Longest wait between attempts while it is down.")


class ExperimentSettings(Section):
    """Shadow and canary experiments: the candidate against the incumbent (:mod:`streams.comparison`)."""

    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Error level: the confidence sequence misses the truth at some "
        "look with at most this probability, however often it is looked at.",
    )
    margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Non-inferiority margin relative to the incumbent: the candidate "
        "must not be worse than (1 - margin) times the incumbent's per-request F1.",
    )
    min_samples: int = Field(1000, ge=1, description="Labelled requests per arm before a promotion.")
    burn_in: int = Field(
        100,
        ge=2,
        description="Labelled requests per arm before any interval or decision (the "
        "interval is asymptotic: it needs a variance estimate).",
    )
    max_duration_s: float = Field(
        21_600.0, gt=0, description="Event time after which an undecided experiment is inconclusive."
    )
    tuning: float = Field(
        5000.0,
        gt=0,
        description="The confidence sequence's tuning: the number of labelled requests "
        "(both arms) at which it is tightest; GrowthBook's default.",
    )
    pre_period_s: float = Field(
        3600.0,
        ge=0,
        description="A canary's covariate: each user's labelled requests under the incumbent in this much "
        "event time before the experiment started (the regression adjustment, CUPED); 0: none.",
    )
    pre_period_users: int = Field(
        50_000,
        ge=1,
        description="Users whose recent requests the monitor keeps for pre-periods, per version; beyond "
        "it, the least recently seen user is forgotten (and has no pre-period).",
    )
    canary_after_shadow: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Stages: a shadow the monitor would promote goes on to a canary at this "
        "share of users instead (which then decides promote or abort); unset: a shadow is promoted.",
    )


class AlertRule(Section):
    """One ``[[alerts]]`` table. Every metric it watches lies in [0, 1]. Quality metrics breach *below* their
    threshold (``below`` in (0, 1]: 0 could never fire; ``resolve_above`` at or above it and below 1: 1 could
    never resolve) or below a share of the registry baseline; the error rate breaches *above* its threshold
    (``above`` in [0, 1): 1 could never fire)."""

    name: str = Field(min_length=1, max_length=100)
    metric: Literal["accuracy", "precision", "recall", "f1", "error_rate"]
    window: Literal["count", "time"] = "count"
    below: float | None = Field(None, description="Absolute threshold.")
    above: float | None = Field(None, description="Absolute threshold breached from below (error_rate).")
    below_baseline: float | None = Field(None, description="Relative drop from the registry baseline.")
    resolve_above: float | None = Field(None, description="Hysteresis: resolve only above this.")
    min_samples: int = Field(100, ge=1)
    for_: int = Field(1, ge=1, alias="for", description="Consecutive breaching evaluations to fire.")
    severity: str = "warning"
    action: Literal["notify", "rollback"] = "notify"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _thresholds(self) -> AlertRule:
        if sum(t is not None for t in (self.below, self.below_baseline, self.above)) != 1:
            raise ValueError(f"alert {self.name!r}: give exactly one of below, below_baseline and above")
        if self.above is not None and self.resolve_above is not None:
            raise ValueError(
                f"alert {self.name!r}: an above rule resolves at its threshold (no resolve_above)"
            )
        if self.above is not None and not 0 <= self.above < 1:
            raise ValueError(f"alert {self.name!r}: above must be in [0, 1): {self.metric} lies in [0, 1]")
        if self.below_baseline is not None and not 0 < self.below_baseline < 1:
            raise ValueError(f"alert {self.name!r}: below_baseline is a relative drop in (0, 1)")
        if self.below is not None and not 0 < self.below <= 1:
            raise ValueError(f"alert {self.name!r}: below must be in (0, 1]: {self.metric} lies in [0, 1]")
        if self.resolve_above is not None:
            if not 0 < self.resolve_above < 1:
                raise ValueError(
                    f"alert {self.name!r}: resolve_above must be in (0, 1): at 1 the alert never resolves"
                )
            if self.below is not None and self.resolve_above < self.below:
                raise ValueError(
                    f"alert {self.name!r}: resolve_above ({self.resolve_above}) must not be below the "
                    f"threshold ({self.below}): the rule fires below it and resolves above it"
                )
        return self
