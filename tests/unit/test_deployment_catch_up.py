"""When the deployment state has caught up: every tracked partition read to its end as of the start.

librdkafka's ``PARTITION_EOF`` comes only on a fetch answer with no new message for the partition, so a
partition written more often than ``fetch.wait.max.ms`` may never give one: the offsets read decide, and an
EOF at or past the end counts too (the end may be a record never delivered, e.g. a transaction marker)."""

from __future__ import annotations

import threading
from typing import cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

import services.kafka.retry as retry_module
from schemas.errors import KafkaClientError
from services import kafka
from services.deployment.follower import CatchUp
from services.kafka.retry import NotYet

COMMANDS, EVENTS = "rec.model-commands", "rec.model-events"


def read(topic: str, partition: int, offset: int) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, value=b"{}")


def eof(topic: str, partition: int, offset: int) -> Message:
    return Message(
        topic=topic, partition=partition, offset=offset, error=KafkaError(KafkaError._PARTITION_EOF)
    )


def test_a_partition_written_without_pause_is_caught_up_at_its_end_as_of_the_start_with_no_eof() -> None:
    catch_up = CatchUp({(COMMANDS, 0): 2, (EVENTS, 0): 10})
    for offset in range(2):
        catch_up.passed(read(COMMANDS, 0, offset))
    for offset in range(9):
        catch_up.passed(read(EVENTS, 0, offset))
    assert not catch_up.done
    assert catch_up.ends == {(EVENTS, 0): 10} and catch_up.at == {(EVENTS, 0): 9}
    catch_up.passed(read(EVENTS, 0, 9))  # the last one before the end; what came later need not be read
    assert catch_up.done and catch_up.at == {}


def test_an_eof_at_the_end_counts_and_one_before_it_does_not() -> None:
    catch_up = CatchUp({(EVENTS, 1): 7})
    catch_up.passed(read(EVENTS, 1, 5))
    catch_up.passed(eof(EVENTS, 1, 6))  # an end seen before the one taken at start: still behind
    assert not catch_up.done and catch_up.at == {(EVENTS, 1): 6}
    catch_up.passed(eof(EVENTS, 1, 7))  # offset 6 was never delivered (a transaction marker, say)
    assert catch_up.done


def test_untracked_partitions_and_other_errors_change_nothing() -> None:
    catch_up = CatchUp({(EVENTS, 0): 3})
    catch_up.passed(read(EVENTS, 2, 50))  # at its end at start, or not read for catching up
    catch_up.passed(read(COMMANDS, 0, 9))
    catch_up.passed(Message(topic=EVENTS, partition=0, offset=4, error=KafkaError(KafkaError._TRANSPORT)))
    assert catch_up.ends == {(EVENTS, 0): 3} and catch_up.at == {}


def test_nothing_to_read_is_caught_up_at_once() -> None:
    assert CatchUp({}).done


def test_the_ends_are_asked_again_while_the_broker_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica or monitor starting during a broker restart waits for the ends, saying so, instead of dying
    of its first timeout; an error that asking again cannot mend is raised at once."""
    answers: list[object] = [_slow(), _slow(), (3, 8)]

    def watermarks(consumer: object, topic: str, partition: int) -> tuple[int, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return cast(tuple[int, int], answer)

    monkeypatch.setattr(kafka, "watermarks", watermarks)
    monkeypatch.setattr(retry_module, "wait_exponential", lambda **_: lambda _state: 0.0)
    catch_up = CatchUp.of(cast(Consumer, None), [TopicPartition(COMMANDS, 0, OFFSET_BEGINNING)])
    assert catch_up.ends == {(COMMANDS, 0): 8} and answers == []

    denied = KafkaClientError("cannot read the offsets of rec.model-commands[0]: TOPIC_AUTHORIZATION_FAILED")
    answers[:] = [denied, (3, 8)]
    with pytest.raises(KafkaClientError, match="AUTHORIZATION"):
        CatchUp.of(cast(Consumer, None), [TopicPartition(COMMANDS, 0, OFFSET_BEGINNING)])

    stop = threading.Event()
    stop.set()  # asked to stop while waiting: nothing is left to read, and nothing raised
    answers[:] = [_slow()]
    assert CatchUp.of(cast(Consumer, None), [TopicPartition(COMMANDS, 0, 0)], stop).done


def _slow() -> KafkaClientError:
    error = KafkaClientError("cannot read the offsets of rec.model-commands[0]: REQUEST_TIMED_OUT")
    error.__cause__ = NotYet("REQUEST_TIMED_OUT")
    return error
