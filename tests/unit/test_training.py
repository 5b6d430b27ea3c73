"""Training: time split, held-out metrics against popularity, registration; logs from files and topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas.errors import ModelError
from services.cli import main
from services.config import load_settings
from services.model.feedback import join_logged
from services.model.interactions import Interactions
from services.model.training import STEPS, train, train_version
from services.registry import Registry
from services.sandbox.versions import train_on_world
from services.sandbox.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(4, n_users=300, n_items=100)


def test_train_reports_held_out_metrics_against_popularity(world: World) -> None:
    log = world.interactions(5000, seed=1)
    steps: list[str] = []
    report = train(log, k=5, progress=steps.append)
    assert steps == list(STEPS[1:5])
    for name in ("accuracy", "precision", "recall", "f1"):
        assert 0 <= report.metrics[name] <= 1  # type: ignore[operator]
    assert report.metrics["f1"] > report.baseline["f1"]  # type: ignore[operator]
    assert report.data["held_out"]["sessions"] == 1000
    assert report.data["sessions"] == 4000
    assert report.data["held_out"]["ts_from"] >= report.data["ts_to"]
    worse = train(log, k=5, degrade=0.8)
    assert worse.metrics["f1"] < report.metrics["f1"] - 0.08  # type: ignore[operator]
    assert worse.data["degrade"] == 0.8


def test_train_version_registers_with_parent_and_summary(tmp_path: Path, world: World) -> None:
    settings = load_settings(registry=str(tmp_path / "reg"))
    first = train_on_world(settings, seed=4, world=world, sessions=3000)
    second = train_on_world(settings, seed=4, world=world, sessions=3000, degrade=0.5)
    assert first.parent is None and second.parent == first.version
    assert first.data["source"] == "world" and first.data["world"]["users"] == 300
    assert second.data["degrade"] == 0.5
    assert second.metrics["f1"] < first.metrics["f1"]  # type: ignore[operator]
    assert [m.version for m in Registry(str(tmp_path / "reg")).versions()] == [first.version, second.version]


@pytest.mark.parametrize("suffix", ["npz", "csv"])
def test_train_from_a_log_file(tmp_path: Path, world: World, suffix: str) -> None:
    path = tmp_path / f"log.{suffix}"
    world.interactions(3000, seed=2).save(str(path))
    settings = load_settings(registry=str(tmp_path / "reg"))
    manifest = train_version(settings, data=str(path))
    assert manifest.data["source"] == "file" and manifest.data["path"] == str(path)
    assert manifest.data["rows"] + manifest.data["held_out"]["rows"] == 60_000
    with pytest.raises(ModelError, match="no interaction log"):
        train_version(settings, data=str(tmp_path / "missing.npz"))


def _prediction(request_id: str, user: str, items: list[str], ts: int) -> dict[str, object]:
    return {
        "request_id": request_id,
        "user_id": user,
        "model_version": "v1",
        "scores": {i: 0.5 for i in items},
        "recommended": items[:1],
        "instance": "serve-1",
        "ts": ts,
    }


def test_logged_predictions_join_outcomes_by_request_id() -> None:
    window = 60_000
    predictions = [
        _prediction("r1", "u-1", ["i-1", "i-2", "i-3"], 1_000),
        _prediction("r1", "u-1", ["i-1", "i-2", "i-3"], 1_100),  # redelivered: counted once
        _prediction("r2", "u-2", ["i-4", "i-5"], 2_000),  # no outcome, long ago: bought nothing
        _prediction("r3", "u-3", ["i-6"], 100_000),  # no outcome yet, within the window: left out
    ]
    outcomes = [{"request_id": "r1", "purchased": ["i-2", "i-9"], "ts": 100_500}]
    log = join_logged(predictions, outcomes, unlabelled="no_purchase", label_window_ms=window)
    assert log.user_id.tolist() == ["u-1"] * 3 + ["u-2"] * 2
    assert log.item_id.tolist() == ["i-1", "i-2", "i-3", "i-4", "i-5"]
    assert log.purchased.tolist() == [False, True, False, False, False]
    assert log.ts.tolist() == [1_000] * 3 + [2_000] * 2
    assert len(np.unique(log.session)) == 2
    dropped = join_logged(predictions, outcomes, unlabelled="drop", label_window_ms=window)
    assert dropped.user_id.tolist() == ["u-1"] * 3


def test_cli_train_show_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--sessions", "3000", "--json"]) == 0
    manifest = orjson.loads(capsys.readouterr().out)
    version = manifest["version"]
    assert manifest["metrics"]["f1"] > manifest["baseline"]["f1"]

    assert main(["train", "--sessions", "3000", "--degrade", "0.6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("registered ") and f"(parent {version})" in out
    assert "f1" in out and "popularity" in out

    assert main(["models", "show", version, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["sha256"] == manifest["sha256"]
    assert main(["models", "show", version]) == 0
    assert manifest["sha256"] in capsys.readouterr().out

    assert main(["models", "verify", version]) == 0
    assert "verified" in capsys.readouterr().out
    artifact = tmp_path / "registry" / version / "model.joblib"  # the conftest's MODELWATCH_REGISTRY
    artifact.chmod(0o644)
    data = bytearray(artifact.read_bytes())
    data[100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert main(["models", "verify", version]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"modelwatch: error: version {version}: artifact sha256")
        and len(err.splitlines()) == 1
    )

    assert main(["models", "show", "20990101T000000-00000000"]) == 1
    assert "no version 20990101T000000-00000000" in capsys.readouterr().err
    assert main(["train", "--degrade", "2"]) == 2


def test_cli_train_refuses_a_log_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "log.json").write_text("[]")
    assert main(["train", "--data", str(tmp_path / "log.json")]) == 1
    assert "name it *.npz or *.csv" in capsys.readouterr().err


def test_interactions_from_a_csv_export_train(tmp_path: Path, world: World) -> None:
    log = world.interactions(2000, seed=5)
    # An export from elsewhere: no session column, booleans spelled out.
    lines = ["user_id,item_id,purchased,ts"] + [
        f"{u},{i},{'true' if p else 'false'},{t}"
        for u, i, p, t in zip(log.user_id, log.item_id, log.purchased, log.ts, strict=True)
    ]
    (tmp_path / "export.csv").write_text("\n".join(lines) + "\n")
    back = Interactions.load(str(tmp_path / "export.csv"))
    assert len(np.unique(back.session)) == 2000
    report = train(back)
    assert report.metrics["f1"] is not None
