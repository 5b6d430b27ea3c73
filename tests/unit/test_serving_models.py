"""A replica serving several models routes each request to the model it names, without a broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from confluent_kafka import Message

from schemas import codec
from services.model.protocol import ModelBase, served
from services.serving.logs import EventLog
from services.serving.models import route
from services.serving.slot import Activation, ModelSlot


class Constant(ModelBase):
    """Scores every candidate ``value``; ``fails_on`` a user raises."""

    def __init__(self, value: float, fails_on: str = "") -> None:
        self.value, self.fails_on = value, fails_on

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        if self.fails_on in user_ids:
            raise ValueError(f"cannot score {self.fails_on}")
        return [np.full(len(c), self.value) for c in candidates]


def slot_with(version: str | None, model: Any = None) -> ModelSlot:
    slot = ModelSlot()
    if version is not None:
        slot.active = Activation(version, served(model), {"command_id": f"c-{version}"})
    return slot


def request(i: int, model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": f"r-{i}", "user_id": f"u-{i}", "items": ["a", "b"], "ts": 1}
    if model is not None:
        body["model"] = model
    return body


def test_each_request_is_scored_by_its_model_and_the_unserved_are_dead_lettered() -> None:
    slots = {
        "home": slot_with("h1", Constant(0.9)),
        "cart": slot_with("c1", Constant(0.2, fails_on="u-4")),
        "feed": slot_with(None),  # served here, never deployed
    }
    asked = [None, "cart", "home", "other", "cart", "feed"]  # None: the default model, home
    requests = [request(i, m) for i, m in enumerate(asked)]
    sources = [Message(topic="rec.requests", partition=0, offset=i, value=b"{}") for i in range(len(asked))]
    dead: list[tuple[bytes | None, bytes]] = []
    routed = route(requests, sources, dead, slots, "home", 1, EventLog("test"))
    assert routed.versions[:3] == ["h1", "c1", "h1"]
    assert routed.models[:3] == ["home", "cart", "home"]
    assert [s is not None for s in routed.scores] == [True, True, True, False, False, False]
    assert list(routed.scores[1]) == [0.2, 0.2]
    assert routed.made_by == {"h1": 2, "c1": 1}
    assert (routed.failed, routed.unserved) == (1, 2)
    letters = {d["offset"]: d for d in (codec("dead-letter").decode(v) for _k, v in dead)}
    assert letters[3]["model"] == "other" and "does not serve model 'other'" in letters[3]["error"]
    assert "it serves home, cart, feed" in letters[3]["error"] and "model_version" not in letters[3]
    assert letters[4]["model"] == "cart" and letters[4]["model_version"] == "c1"  # cart failed on it
    assert letters[5]["model"] == "feed" and "no version of model 'feed' is deployed" in letters[5]["error"]
