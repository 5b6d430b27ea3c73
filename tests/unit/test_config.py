from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import ConfigError
from services import kafka
from services.config import load_settings


def test_defaults_name_the_local_broker_and_rec_prefix() -> None:
    s = load_settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.topic("requests") == "rec.requests"


def test_toml_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modelwatch.toml").write_text(
        'topic_prefix = "blue."\nbootstrap = "k1:9092"\n[serve]\nbatch_size = 64\n'
        '[[alerts]]\nname = "f1-drop"\nmetric = "f1"\nbelow_baseline = 0.15\nfor = 2\naction = "rollback"\n'
    )
    s = load_settings()
    assert (s.topic_prefix, s.bootstrap_servers, s.serve.batch_size) == ("blue.", "k1:9092", 64)
    assert s.alerts[0].for_ == 2 and s.alerts[0].action == "rollback"
    monkeypatch.setenv("MODELWATCH_SERVE__BATCH_SIZE", "7")
    monkeypatch.setenv("MODELWATCH_TOPIC_PREFIX", "green.")
    s = load_settings()
    assert (s.topic_prefix, s.serve.batch_size) == ("green.", 7)


def test_bad_values_are_one_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELWATCH_SERVE__BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match=r"serve\.batch_size"):
        load_settings()


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELWATCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings()


def test_security_settings_reach_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELWATCH_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MODELWATCH_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MODELWATCH_SASL_USERNAME", "svc")
    monkeypatch.setenv("MODELWATCH_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("MODELWATCH_SSL_CA_LOCATION", "/etc/ca.pem")
    s = load_settings()
    assert "s3cret" not in repr(s)
    conf = kafka.client_config(s, **{"group.id": "g"})
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["group.id"] == "g"
