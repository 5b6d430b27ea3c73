from __future__ import annotations

import logging
import re
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


def test_a_misspelt_section_or_key_in_the_file_is_named_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "modelwatch.toml").write_text(
        '[[alert]]\nname = "f1-low"\nmetric = "f1"\nbelow = 0.3\n[serve]\nbatch_siz = 64\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("unknown settings 'serve.batch_siz', 'alert' in modelwatch.toml"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("[monitr]\nemit_every_n = 5\n", "unknown setting 'monitr' in"),
        ('[[alerts]]\nname = "a"\nmetric = "f1"\nbelow = 0.3\nfour = 2\n', "'alerts[0].four' in"),
        ("[broker]\nprot = 1\n", "'broker.prot' in"),
    ],
)
def test_every_section_refuses_unknown_keys(tmp_path: Path, body: str, words: str) -> None:
    (tmp_path / "modelwatch.toml").write_text(body)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings()


def test_a_misspelt_nested_variable_is_named_and_other_modelwatch_variables_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not settings: the tests' own, the config file's name, the secure broker's passwords.
    for name in (
        "MODELWATCH_TEST_BROKER_PORT",
        "MODELWATCH_KEEP_TEST_BROKER",
        "MODELWATCH_TEST_FAULT_PORT",
        "MODELWATCH_FAULT_REPORT_DIR",
        "MODELWATCH_MONITOR_PASSWORD",
        "MODELWATCH_SERVICE_PASSWORD",
    ):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("MODELWATCH_BOOTSTRAP", "k9:9092")  # a setting
    assert load_settings().bootstrap_servers == "k9:9092"
    monkeypatch.setenv("MODELWATCH_SERVE__BATCH_SIZ", "5")
    with pytest.raises(
        ConfigError, match=re.escape("'serve.batch_siz' in the environment (MODELWATCH_SERVE__")
    ):
        load_settings()


def rules(*tables: str) -> str:
    return "".join(f"[[alerts]]\n{t}\n" for t in tables)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            rules('name = "a"\nmetric = "f1"\nbelow = 0.3', 'name = "a"\nmetric = "recall"\nbelow = 0.2'),
            "two alert rules are named 'a'",
        ),
        (rules('name = "a"\nmetric = "f1"\nbelow = 1.5'), "below must be in (0, 1]"),
        (rules('name = "a"\nmetric = "f1"\nbelow = 0'), "below must be in (0, 1]"),
        (
            rules('name = "a"\nmetric = "f1"\nbelow = 0.3\nresolve_above = 0.2'),
            "must not be below the threshold",
        ),
        (rules('name = "a"\nmetric = "f1"\nbelow_baseline = 0.2\nresolve_above = 1.0'), "never resolves"),
        (rules('name = "a"\nmetric = "f1"\nbelow_baseline = 1.2'), "relative drop in (0, 1)"),
        (rules('name = "a"\nmetric = "f1"'), "exactly one of below, below_baseline and above"),
        (rules('name = ""\nmetric = "f1"\nbelow = 0.3'), "alerts[0].name"),
    ],
)
def test_every_alert_rule_is_checked(tmp_path: Path, body: str, words: str) -> None:
    (tmp_path / "modelwatch.toml").write_text(body)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings()


def test_consistent_rules_load(tmp_path: Path) -> None:
    (tmp_path / "modelwatch.toml").write_text(
        rules(
            'name = "f1-low"\nmetric = "f1"\nbelow = 0.3\nresolve_above = 0.35\naction = "rollback"',
            'name = "f1-drop"\nmetric = "f1"\nbelow_baseline = 0.2\nresolve_above = 0.3',
        )
    )
    assert [r.name for r in load_settings().alerts] == ["f1-low", "f1-drop"]


def test_model_picks_the_model_and_keeps_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.registry import Registry

    monkeypatch.setenv("MODELWATCH_MODEL_NAME", "home")
    home = load_settings()
    cart = home.for_model("cart")
    assert (home.model_name, home.default_model) == ("home", "home")
    assert (cart.model_name, cart.default_model) == ("cart", "home")
    assert cart.for_model("home").default_model == "home"
    assert home.for_model(None) is home and home.for_model("home") is home
    assert cart.model_of({}) == "home" and cart.model_of({"model": "cart"}) == "cart"
    # Only the default model also reads the registry's flat layout from before models were named.
    assert (Registry.from_settings(home).flat, Registry.from_settings(cart).flat) == (True, False)
    assert Registry.from_settings(cart).model_root.endswith("/models/cart")
    with pytest.raises(ConfigError, match="model name 'home feed'"):
        home.for_model("home feed")


def test_debug_loggers_say_more_and_no_other_logger_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.app import log_at_debug

    monkeypatch.setenv("MODELWATCH_MONITOR__DEBUG_LOGGERS", '["faust.tables.recovery"]')
    names = load_settings().monitor.debug_loggers
    assert names == ["faust.tables.recovery"]
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)  # as the Faust worker sets up its root handler
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logging.root, "level", logging.INFO)
    chosen, other = logging.getLogger(names[0]), logging.getLogger("aiokafka.consumer.group_coordinator")
    monkeypatch.setattr(chosen, "level", logging.NOTSET)
    log_at_debug(names)
    assert chosen.isEnabledFor(logging.DEBUG) and handler.level == logging.DEBUG
    assert not other.isEnabledFor(logging.DEBUG)
    chosen.setLevel(logging.NOTSET)  # clears the loggers' cached levels, which monkeypatch's undo does not
