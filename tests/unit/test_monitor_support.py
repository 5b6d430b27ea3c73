"""The monitor tests' reader of the labelled topic keeps labelled predictions, not model failures."""

from __future__ import annotations

from streams.failures import Failure, encode_failures
from streams.join import Labelled, encode_bundle
from tests.integration.monitor_support import labelled_predictions


def test_failure_messages_on_the_labelled_topic_are_not_read_as_predictions() -> None:
    bundle = encode_bundle([Labelled("r1", "v1", 10, None, expired=True), Labelled("r2", "v1", 11, None)])
    failures = encode_failures("v1", [Failure("v1", "r3", 12)])
    items = labelled_predictions([bundle, failures, None, encode_bundle([Labelled("r4", "v1", 13, None)])])
    assert [(i["request_id"], i["model_version"]) for i in items] == [
        ("r1", "v1"),
        ("r2", "v1"),
        ("r4", "v1"),
    ]
