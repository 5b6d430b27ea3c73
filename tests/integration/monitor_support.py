"""What the monitor's integration tests share: synthetic traffic with known truth, a real worker process,
and readers that rebuild each metrics event's window to compare it with scikit-learn."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import TopicPartition
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from schemas import codec
from services import kafka
from services.config import Settings, load_settings
from services.kafka.topics import create_topics, delete_topics
from services.sandbox.processes import wait_for
from streams import READY
from streams.failures import is_failures
from streams.offsets import committed_offsets


def modelwatch_bin() -> str:
    return str(Path(sys.executable).parent / "modelwatch")


# -- traffic with known truth -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    request_id: str
    version: str
    ts: int
    candidates: tuple[str, ...]
    recommended: tuple[str, ...]
    purchased: tuple[str, ...] | None  # None: the outcome never comes
    outcome_ts: int | None

    def prediction(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "user_id": f"u-{abs(hash(self.request_id)) % 100}",
            "model_version": self.version,
            "scores": {c: (0.9 if c in self.recommended else 0.1) for c in self.candidates},
            "recommended": list(self.recommended),
            "instance": "test",
            "ts": self.ts,
        }

    def outcome(self) -> dict[str, Any] | None:
        if self.purchased is None:
            return None
        return {"request_id": self.request_id, "purchased": list(self.purchased), "ts": self.outcome_ts}

    def expired(self, label_window_ms: int) -> bool:
        return self.outcome_ts is None or self.outcome_ts > self.ts + label_window_ms

    def labels(self, label_window_ms: int) -> tuple[list[int], list[int]]:
        """(y_true, y_pred) over the candidates; an expired request counts as "no purchase"."""
        bought = set() if self.expired(label_window_ms) else set(self.purchased or ())
        rec = set(self.recommended)
        return [int(c in bought) for c in self.candidates], [int(c in rec) for c in self.candidates]


def traffic(
    version: str,
    n: int,
    *,
    seed: int,
    t0: int,
    step_ms: int,
    hit: float,
    miss: float,
    k: int = 3,
    n_candidates: int = 10,
    missing: float = 0.0,
    late: float = 0.0,
    delay_ms: int = 100,
    late_ms: int = 10_000,
    exact: tuple[int, int] | None = None,
) -> list[Req]:
    """``n`` requests served by ``version``: a recommended candidate is bought with probability ``hit``,
    any other with ``miss``. A share ``missing`` never gets an outcome, a share ``late`` gets it after
    ``late_ms``. With ``exact=(a, b)`` every request buys ``a`` recommended and ``b`` other candidates, so
    every window of such requests has the same metrics."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        candidates = tuple(f"i-{j}" for j in rng.sample(range(200), n_candidates))
        recommended = candidates[:k]
        if exact is not None:
            bought = recommended[: exact[0]] + candidates[k : k + exact[1]]
        else:
            bought = tuple(c for c in candidates if rng.random() < (hit if c in recommended else miss))
        ts = t0 + i * step_ms
        r = rng.random()
        if r < missing:
            purchased, ots = None, None
        elif r < missing + late:
            purchased, ots = bought, ts + late_ms
        else:
            purchased, ots = bought, ts + delay_ms
        rid = f"{version}-{seed}-{i}-{uuid.uuid4().hex[:6]}"
        out.append(Req(rid, version, ts, candidates, recommended, purchased, ots))
    return out


def by_ts(*streams: Iterable[Req]) -> list[Req]:
    return sorted((r for s in streams for r in s), key=lambda r: (r.ts, r.request_id))


class Storefront:
    """Produces predictions and outcomes as the prediction service and the storefront would (keyed by
    request_id, encoded by the codec, default partitioner)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = kafka.producer(settings)
        self.errors: list[str] = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _send(self, suffix: str, event: str, key: str, value: dict[str, Any], partition: int = -1) -> None:
        self.producer.produce(
            self.settings.topic(suffix),
            key=key.encode(),
            value=codec(event).encode(value),
            partition=partition,
            on_delivery=self._on_delivery,
        )

    def predictions(self, reqs: Iterable[Req]) -> None:
        for r in reqs:
            self._send("predictions", "prediction", r.request_id, r.prediction())
        self.flush()

    def outcomes(self, reqs: Iterable[Req]) -> None:
        """Outcomes that come, in the order of their own event time (as a storefront writes them)."""
        events = sorted((o for o in (r.outcome() for r in reqs) if o is not None), key=lambda o: o["ts"])
        for o in events:
            self._send("outcomes", "outcome", o["request_id"], o)
        self.flush()

    def tick(self, ts: int, partitions: int) -> None:
        """An outcome of no known request on every partition: moves each partition's label clock to ``ts``."""
        for p in range(partitions):
            rid = f"tick-{uuid.uuid4().hex[:8]}"
            self._send(
                "outcomes", "outcome", rid, {"request_id": rid, "purchased": [], "ts": ts}, partition=p
            )
        self.flush()

    def flush(self) -> None:
        assert self.producer.flush(30) == 0 and not self.errors, self.errors


# -- one world of topics and one worker per test module ------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return repr(value)


def write_config(path: Path, monitor: dict[str, Any], alerts: list[dict[str, Any]], **top: Any) -> Path:
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    lines.append("[monitor]")
    lines += [f"{k} = {_toml(v)}" for k, v in monitor.items()]
    for rule in alerts:
        lines.append("[[alerts]]")
        lines += [f"{k} = {_toml(v)}" for k, v in rule.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def topic_world(bootstrap: str, partitions: int) -> Iterator[Settings]:
    """Like conftest's ``make_settings``, for a whole module: a fresh prefix with its topics, deleted after
    (the monitor's own topics included)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = load_settings(bootstrap=bootstrap, topic_prefix=prefix)
    create_topics(settings, partitions=partitions)
    try:
        yield settings
    finally:
        delete_topics(settings)


class MonitorProcess:
    """``modelwatch monitor --config FILE`` as a subprocess: started, waited for, killed."""

    def __init__(
        self,
        settings: Settings,
        config: Path,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        args: Iterable[str] = (),
        name: str = "monitor",
    ):
        self.settings = settings
        self.config = config
        self.workdir = workdir
        self.args = list(args)  # more of `modelwatch monitor`'s arguments (--model NAME)
        self.name = name  # of its log files and data directory
        self.env = {
            **os.environ,
            "MODELWATCH_BOOTSTRAP": settings.bootstrap_servers,
            "MODELWATCH_TOPIC_PREFIX": settings.topic_prefix,
            "MODELWATCH_MONITOR__DATA_DIR": str(workdir / f"{name}-data"),
            **(extra_env or {}),
        }
        self.env.pop("MODELWATCH_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 90.0, faust_cli: bool = False, wait: bool = True) -> None:
        """Start ``modelwatch monitor --config FILE`` (or ``faust -A streams.app worker`` with the config in
        MODELWATCH_CONFIG) and wait until it says it is ready (``wait=False``: later, :meth:`wait_ready`)."""
        self.starts += 1
        env = dict(self.env)
        if faust_cli:
            argv = [str(Path(sys.executable).parent / "faust"), "-A", "streams.app", "worker", "-l", "info"]
            env["MODELWATCH_CONFIG"] = str(self.config)
        else:
            argv = [modelwatch_bin(), "monitor", "--config", str(self.config), *self.args]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )

        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until the started worker says it is ready."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the monitor exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            return READY in self.log()

        wait_for(ready, timeout, f"the {self.name} worker to be ready", every=0.25)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def committed(settings: Settings, group: str, suffixes: Iterable[str]) -> dict[tuple[str, int], int]:
    """What ``group`` has committed on every partition of the topics named by ``suffixes``."""
    meta = kafka.admin(settings).list_topics(timeout=10)
    names = [settings.topic(s) for s in suffixes]
    return committed_offsets(settings, group, [(n, p) for n in names for p in meta.topics[n].partitions])


def wait_consumed(settings: Settings, suffixes: Iterable[str], timeout: float = 30.0) -> None:
    """Wait until the monitor has committed every message now in the topics: it has processed them (the
    source topics are read in the source reader's group, the internal ones in the Faust group)."""
    suffixes = list(suffixes)
    c = kafka.consumer(settings, "modelwatch-test-watermarks")
    try:
        ends: dict[tuple[str, int], int] = {}
        meta = c.list_topics(timeout=10)
        for s in suffixes:
            for p in meta.topics[settings.topic(s)].partitions:
                ends[(settings.topic(s), p)] = c.get_watermark_offsets(
                    TopicPartition(settings.topic(s), p), timeout=10
                )[1]
    finally:
        c.close()
    sources = {"predictions", "predictions.shadow", "outcomes"}
    by_group = {
        settings.monitor_route_group: [s for s in suffixes if s in sources],
        settings.monitor_app_id: [s for s in suffixes if s not in sources],
    }

    def done() -> bool:
        offsets = {
            tp: at
            for group, named in by_group.items()
            for tp, at in committed(settings, group, named).items()
        }
        return all(end == 0 or offsets.get(tp, -1) >= end for tp, end in ends.items())

    wait_for(done, timeout, f"the monitor to consume {', '.join(suffixes)}")


# -- reading what the monitor wrote ------------------------------------------------------------------------


def read_events(settings: Settings, suffix: str, event: str) -> list[dict[str, Any]]:
    return [codec(event).decode(v) for _, v, _ in kafka.read_topic(settings, settings.topic(suffix))]


def read_labelled(settings: Settings) -> list[dict[str, Any]]:
    """The labelled predictions on the monitor's repartition topic, in each partition's order (so in each
    version's order)."""
    topic = f"{settings.topic_prefix}monitor-labelled"
    return labelled_predictions(v for _, v, _ in kafka.read_topic(settings, topic))


def labelled_predictions(values: Iterable[bytes | None]) -> list[dict[str, Any]]:
    """The labelled predictions in messages of the repartition topic. A message is a bundle, one version's
    labelled requests from one batch of the join (a JSON array), or a batch of that version's model
    failures (a JSON object, :mod:`streams.failures`), which holds no prediction."""
    return [item for v in values if v is not None and not is_failures(v) for item in orjson.loads(v)]


def sklearn_metrics(y_true: list[int], y_pred: list[int]) -> dict[str, float | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        values = {
            "accuracy": accuracy_score(y_true, y_pred) if y_true else np.nan,
            "precision": precision_score(y_true, y_pred, zero_division=np.nan) if y_true else np.nan,
            "recall": recall_score(y_true, y_pred, zero_division=np.nan) if y_true else np.nan,
            "f1": f1_score(y_true, y_pred, zero_division=np.nan) if y_true else np.nan,
        }
    return {k: None if np.isnan(v) else float(v) for k, v in values.items()}


def window_of(
    metrics: dict[str, Any], stream: list[dict[str, Any]], count_window: int, time_window_s: int
) -> list[dict[str, Any]]:
    """The labelled requests a metrics event speaks for: of the version's first ``total`` counted requests,
    the last N (count) or those within T seconds of the latest event time (time)."""
    seen = stream[: metrics["total"]]
    if metrics["window"]["kind"] == "count":
        return seen[-count_window:]
    if not seen:
        return []
    latest = max(e["ts"] for e in seen)
    return [e for e in seen if e["ts"] > latest - time_window_s * 1000]


def counted_stream(labelled: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """A version's labelled requests as the windows count them: in order, each once, dropped ones out."""
    seen: set[str] = set()
    out = []
    for e in labelled:
        if e["model_version"] != version or e["request_id"] in seen:
            continue
        seen.add(e["request_id"])
        if e["counts"] is not None:
            out.append(e)
    return out


def check_against_sklearn(
    metrics: list[dict[str, Any]],
    labelled: list[dict[str, Any]],
    truth: dict[str, Req],
    *,
    label_window_ms: int,
    count_window: int,
    time_window_s: int,
) -> int:
    """Assert every metrics event equals scikit-learn on the test's own labels of the same window; return
    how many events were checked."""
    streams: dict[str, list[dict[str, Any]]] = {}
    checked = 0
    for m in metrics:
        version = m["model_version"]
        if version not in streams:
            streams[version] = counted_stream(labelled, version)
        window = window_of(m, streams[version], count_window, time_window_s)
        assert m["n"] == len(window), (m, len(window))
        y_true: list[int] = []
        y_pred: list[int] = []
        for e in window:
            t, p = truth[e["request_id"]].labels(label_window_ms)
            y_true += t
            y_pred += p
        expected = sklearn_metrics(y_true, y_pred)
        for name, value in expected.items():
            assert m[name] == value, (name, m, expected)
        checked += 1
    return checked


#: A monitor that reacts within a second or two of event time, with a label window of
#: ``QUICK_WINDOW_MS``: what most monitor tests run.
QUICK_WINDOW_MS = 2000
QUICK_MONITOR: dict[str, Any] = {
    "label_window_s": QUICK_WINDOW_MS / 1000,
    "count_window": 40,
    "time_window_s": 1,
    "emit_every_n": 20,
    "emit_every_s": 1.0,
    "commit_interval_s": 0.3,
    "session_timeout_s": 6,
}

#: The rollback tests' monitor: a one-second label window, and a cooldown long enough that a test sees
#: exactly one rollback; and their rule, which orders it.
ROLLBACK_WINDOW_MS = 1000
ROLLBACK_MONITOR: dict[str, Any] = {
    "label_window_s": ROLLBACK_WINDOW_MS / 1000,
    "count_window": 40,
    "time_window_s": 2,
    "emit_every_n": 20,
    "emit_every_s": 1.0,
    "commit_interval_s": 0.3,
    "session_timeout_s": 6,
    "rollback_cooldown_s": 300,
}
ROLLBACK_RULE = {"name": "f1-rollback", "metric": "f1", "below": 0.3, "resolve_above": 0.5, "min_samples": 20,
                 "for": 2, "severity": "critical", "action": "rollback"}  # fmt: skip


def trace_requests(settings: Settings, request_ids: Iterable[str]) -> dict[str, Any]:
    """Where the halves of ``request_ids`` went in the monitor: the source and joinable offsets of each
    prediction and outcome, the pending-table records naming them, and the group's committed offsets. For
    a failure message when a request was never labelled."""
    wanted = set(request_ids)
    prefix = settings.topic_prefix
    found: dict[str, list[str]] = {rid: [] for rid in wanted}
    for suffix in ("predictions", "outcomes"):
        for m in kafka.read_messages(settings, settings.topic(suffix), timeout=60):
            rid = orjson.loads(m.value() or b"{}").get("request_id")
            if rid in wanted:
                found[rid].append(f"{suffix}[{m.partition()}]@{m.offset()}")
    for m in kafka.read_messages(settings, f"{prefix}monitor-joinable", timeout=60):
        for e in orjson.loads(m.value() or b"{}").get("events", []):
            if e.get("request_id") in wanted:
                where = f"joinable[{m.partition()}]@{m.offset()}"
                found[e["request_id"]].append(f"{where} {e['kind']} ts={e['ts']}")
    for m in kafka.read_messages(settings, f"{prefix}monitor-pending-changelog", timeout=60):
        key = (m.key() or b"").decode("utf-8", "replace")
        for rid in wanted:
            if rid in key:
                what = "deleted" if m.value() is None else "set"
                found[rid].append(f"pending[{m.partition()}]@{m.offset()} {key} {what}")
    by_group = {
        settings.monitor_route_group: ["predictions", "outcomes"],
        settings.monitor_app_id: ["monitor-joinable"],
    }
    offsets = {
        f"{t[len(prefix) :]}[{p}]": at
        for group, suffixes in by_group.items()
        for (t, p), at in committed(settings, group, suffixes).items()
    }
    return {"requests": found, "committed": offsets}
