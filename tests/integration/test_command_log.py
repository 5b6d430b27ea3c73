"""The command log on the real broker: one partition, one order, whoever writes it, whatever its clock."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import NewTopic

from schemas.errors import KafkaClientError
from services import kafka
from services.cli import main
from services.config import Settings, load_settings
from services.kafka.topics import create_topics, delete_topics, ensure_topics
from streams.history import CommandFollower

ONE_LINE = "the command log needs exactly one"


@pytest.fixture
def three_partition_log(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A prefix whose command topic was made with three partitions (as `topics create` did before)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("MODELWATCH_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("MODELWATCH_TOPIC_PREFIX", prefix)
    settings = load_settings(bootstrap=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(kafka.admin(settings), [NewTopic(settings.topic("model-commands"), 3, 1)])
    yield settings
    delete_topics(settings)


def test_every_reader_refuses_a_command_topic_with_more_than_one_partition(
    three_partition_log: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = three_partition_log
    topic = settings.topic("model-commands")

    with pytest.raises(KafkaClientError, match=ONE_LINE):
        create_topics(settings)
    assert main(["topics", "create"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and topic in err and "MODELWATCH_TOPIC_PREFIX" in err, err

    assert main(["models", "history"]) == 1
    assert ONE_LINE in capsys.readouterr().err
    assert main(["rollback"]) == 1
    assert ONE_LINE in capsys.readouterr().err

    with pytest.raises(KafkaClientError, match=ONE_LINE):
        CommandFollower(settings).start()

    # A replica stops at start, saying why in its last line, before it consumes a request.
    replica = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "--instance", "refuser"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replica.returncode == 1
    last = replica.stderr.strip().splitlines()[-1]
    assert last.startswith("modelwatch: error:") and ONE_LINE in last, replica.stderr[-2000:]
