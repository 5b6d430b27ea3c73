"""A replica's side of an experiment: the canary split and the shadow scorer.

- **Canary.** A request goes to the candidate when :func:`bucket` of its ``user_id``, salted by the
  experiment id, is below the traffic share. The bucket is the first 8 bytes of SHA-256 of
  ``"<experiment_id>:<user_id>"`` read as a number in [0, 1): it depends on nothing but the user and the
  experiment, so a user stays on one arm for the whole experiment, every replica splits alike whichever
  partition a request lands on, and a new experiment draws its arms afresh. Each prediction carries the
  version that made it.
- **Shadow.** The incumbent answers every request as before. The batch is also handed to a
  :class:`ShadowScorer` thread (a bounded queue: a slow candidate never holds up the answers; what does not
  fit is counted and dropped), which scores it with the candidate and writes its predictions to
  ``rec.predictions.shadow``, never to ``rec.predictions``. They are written outside the exactly-once
  transaction: they are the monitor's evidence, not an answer, and a redone batch may write one twice
  with the same request_id.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import KafkaError, Producer

from services.deployment.experiments import Experiment
from services.model.protocol import Served
from services.serving.logs import EventLog
from services.serving.scoring import Scored, score

if TYPE_CHECKING:
    from services.serving.slot import Activation

#: 2**64: the bucket is the hash's first 8 bytes over this.
_SPAN = float(1 << 64)


def bucket(experiment_id: str, user_id: str) -> float:
    """The user's place in [0, 1) for this experiment: the same on every replica, at every request."""
    digest = hashlib.sha256(f"{experiment_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SPAN


def on_candidate(experiment_id: str, user_id: str, traffic: float) -> bool:
    """Whether a canary of share ``traffic`` sends ``user_id`` to its candidate."""
    return bucket(experiment_id, user_id) < traffic


@dataclass(frozen=True)
class Trial:
    """A running experiment as a replica holds it: the candidate loaded and verified."""

    experiment: Experiment
    model: Served
    #: Where a shadow's batches go; None for a canary.
    shadow: ShadowScorer | None = None


def score_with_experiment(
    active: Activation, requests: Sequence[dict[str, Any]], default_k: int
) -> tuple[Scored, list[str]]:
    """Score ``requests`` as the active version and its experiment (if any) say; return the scores and,
    per request, the version whose answer it is. A shadow's candidate gets the batch too, off this path."""
    trial = active.trial
    traffic = trial.experiment.traffic if trial is not None else None
    if trial is None or traffic is None:
        scored = score(active.model, requests, default_k)
        if trial is not None and trial.shadow is not None:
            trial.shadow.offer(trial, requests)
        return scored, [active.version] * len(requests)
    experiment = trial.experiment
    to_candidate = [on_candidate(experiment.experiment_id, str(r["user_id"]), traffic) for r in requests]
    versions = [trial.experiment.candidate if c else active.version for c in to_candidate]
    out = Scored(scores=[None] * len(requests), selected=[None] * len(requests))
    for model, wanted in ((active.model, False), (trial.model, True)):
        positions = [i for i, c in enumerate(to_candidate) if c is wanted]
        if not positions:
            continue
        part = score(model, [requests[i] for i in positions], default_k)
        for j, i in enumerate(positions):
            out.scores[i], out.selected[i] = part.scores[j], part.selected[j]
        out.failures += [(positions[j], error) for j, error in part.failures]
    out.failures.sort()
    return out, versions


def predictions_by_version(scored: Scored, versions: Sequence[str]) -> Counter[str]:
    """How many predictions each version made in a batch (the requests it did not fail on)."""
    return Counter(v for v, s in zip(versions, scored.scores, strict=True) if s is not None)


class ShadowScorer(threading.Thread):
    """Scores batches with a shadow candidate and writes its predictions to the shadow topic."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        instance: str,
        default_k: int,
        log: EventLog,
        depth: int = 64,
        model: str | None = None,
    ) -> None:
        super().__init__(name=f"shadow-{instance}-{model or ''}", daemon=True)
        self.producer, self.topic, self.instance = producer, topic, instance
        self.model = model  # named in each shadow prediction
        self.default_k, self.log = default_k, log
        self._batches: queue.Queue[tuple[Trial, list[dict[str, Any]]]] = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self.scored = 0  # shadow predictions handed to the producer
        self.dropped = 0  # requests not shadowed because the queue was full
        self.failed = 0  # requests the candidate failed on

    def offer(self, trial: Trial, requests: Sequence[dict[str, Any]]) -> None:
        """Hand a batch over without waiting: a full queue drops it (counted), the answers go on."""
        try:
            self._batches.put_nowait((trial, list(requests)))
        except queue.Full:
            self.dropped += len(requests)
            self.log.warning("shadow_dropped", requests=len(requests), total=self.dropped)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.ident is not None:
            self.join(timeout)

    def run(self) -> None:
        try:
            while not self._stopping.is_set() or not self._batches.empty():
                try:
                    trial, requests = self._batches.get(timeout=0.1)
                except queue.Empty:
                    self.producer.poll(0)
                    continue
                self._write(trial, requests)
        finally:
            self.producer.flush(10)

    def _write(self, trial: Trial, requests: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        scored = score(trial.model, requests, self.default_k)
        now_ms = int(time.time() * 1000)
        latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        version = trial.experiment.candidate
        for i, request in enumerate(requests):
            scores, selected = scored.scores[i], scored.selected[i]
            if scores is None or selected is None:
                continue
            items, rid = request["items"], request["request_id"]
            value = orjson.dumps(
                {
                    "request_id": rid,
                    "user_id": request["user_id"],
                    "model_version": version,
                    "scores": dict(zip(items, scores, strict=False)),
                    "recommended": [items[j] for j in selected],
                    "instance": self.instance,
                    "ts": now_ms,
                    "request_ts": request["ts"],
                    "latency_ms": latency_ms,
                    **({"model": self.model} if self.model else {}),
                }
            )
            while True:
                try:
                    self.producer.produce(self.topic, value, rid, on_delivery=self._on_delivery)
                    break
                except BufferError:  # the local queue is full: serve delivery reports until there is room
                    self.producer.poll(0.1)
            self.scored += 1
        if scored.failures:
            self.failed += len(scored.failures)
            self.log.warning("shadow_failed", version=version, requests=len(scored.failures))
        self.producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.log.error("shadow_prediction_lost", error=err.str())


__all__ = [
    "ShadowScorer",
    "Trial",
    "bucket",
    "on_candidate",
    "predictions_by_version",
    "score_with_experiment",
]
