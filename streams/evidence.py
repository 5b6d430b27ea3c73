"""An experiment's evidence: what the join sends the comparison, on the labelled topic.

While the command log says an experiment runs, the join agent sends each batch's evidence for it (a
canary's arms, a shadow's pairs, each row ending with its request id) with the join's event-time clock,
keyed by the incumbent version: one labelled partition, where the worker that owns it keeps the users'
pre-periods (:mod:`streams.pre_periods`) and runs the comparison (:mod:`streams.experiments`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import orjson

from services.deployment.experiments import Experiment
from services.serving.experiment import on_candidate
from streams.comparison import Mode
from streams.join import Labelled, Paired

_MARK = b'{"experiment":'
#: Labelled requests (or pairs) per evidence message.
CHUNK = 1000


def is_evidence(value: bytes) -> bool:
    """Whether a message of the labelled stream is an experiment's evidence."""
    return value.startswith(_MARK)


def evidence(
    experiment: Experiment,
    labelled: Iterable[Labelled],
    paired: Iterable[Paired],
    watermark: int | None = None,
) -> list[tuple[str, bytes]]:
    """One batch's evidence for ``experiment``, as (key, value) of labelled-topic messages of at most
    :data:`CHUNK` requests each (well under Kafka's 1 MB message limit), each row ending with its request
    id (a replay of the join is recognised by it: :mod:`streams.experiment_replays`). ``watermark`` is the
    join's event-time clock (:func:`streams.experiment_agents.event_clock`), the experiment's clock: with
    it and no evidence, one message that carries only the clock (an experiment without labelled traffic
    still reaches its ``max_duration_s``); without either, none."""
    arms, pairs = evidence_rows(experiment, labelled, paired)
    return evidence_messages(experiment, arms, pairs, watermark)


def evidence_rows(
    experiment: Experiment, labelled: Iterable[Labelled], paired: Iterable[Paired]
) -> tuple[list[list[Any]], list[list[Any]]]:
    """The rows of :func:`evidence`: a canary's arms, a shadow's pairs."""
    arms: list[list[Any]] = []
    pairs: list[list[Any]] = []
    if experiment.mode == Mode.CANARY and experiment.traffic is not None:
        for item in labelled:
            c = item.counts
            if c is None or not item.user_id:
                continue
            # Each arm only its own users: the candidate's answers to others (an earlier experiment's,
            # labelled late) and the incumbent's to the candidate's users (before this one) are not its.
            arm = on_candidate(experiment.experiment_id, item.user_id, experiment.traffic)
            if item.model_version == (experiment.candidate if arm else experiment.incumbent):
                arms.append([int(arm), item.user_id, item.ts, c.tp, c.fp, c.fn, item.request_id])
    elif experiment.mode == Mode.SHADOW:
        for p in paired:
            if (p.candidate, p.incumbent) == (experiment.candidate, experiment.incumbent):
                c, i = p.candidate_counts, p.incumbent_counts
                pairs.append([p.ts, c.tp, c.fp, c.fn, i.tp, i.fp, i.fn, p.request_id])
    return arms, pairs


def evidence_messages(
    experiment: Experiment, arms: list[list[Any]], pairs: list[list[Any]], watermark: int | None
) -> list[tuple[str, bytes]]:
    """The messages of :func:`evidence`."""
    # Keyed by the incumbent: on its labelled partition, with its users' pre-periods (streams.pre_periods).
    key, described = experiment.incumbent, asdict(experiment)
    clock = {} if watermark is None else {"watermark": watermark}
    rows = max(len(arms), len(pairs))
    starts = range(0, rows, CHUNK) if rows or watermark is None else [0]
    return [
        (
            key,
            orjson.dumps(
                {"experiment": described, "arms": arms[i : i + CHUNK], "pairs": pairs[i : i + CHUNK], **clock}
            ),
        )
        for i in starts
    ]
