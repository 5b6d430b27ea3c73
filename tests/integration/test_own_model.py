"""The README's "Your own model", run as written on the real broker: a model class in a module outside the
project's packages (``user_models/shop_knn.py``) is trained by the README's Python block, registered and
deployed by its commands, served by two replicas whose predictions are what the class computes for the same
requests (contexts included), and watched by the monitor, which rolls it back when its live precision
falls under half the baseline its registration recorded; a third replica without ``model_path`` rejects
the version naming the module and keeps serving the version before it."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from services.cli import main
from services.config import Settings
from services.deployment.commands import make, publish, read_history
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from streams.rollback import ISSUER
from tests.integration.monitor_support import MonitorProcess, Storefront, read_events, write_config
from tests.integration.serving_support import Collector, Replica, encoded, produce, requests_of, wait_for

ROOT = Path(__file__).resolve().parents[2]
USER_MODELS = Path(__file__).resolve().parent / "user_models"
MONITOR = {
    "label_window_s": 5.0,
    "count_window": 40,
    "emit_every_n": 20,
    "emit_every_s": 1.0,
    "commit_interval_s": 0.3,
    "session_timeout_s": 6,
}
REQUESTS = 300
#: Watched like the built-in one: precision under half the registered baseline (from --evaluate) rolls back.
RULE = {"name": "precision-drop", "metric": "precision", "below_baseline": 0.5, "min_samples": 40, "for": 1,
        "severity": "critical", "action": "rollback"}  # fmt: skip


def readme_example() -> tuple[str, list[str]]:
    """The Python block and the command lines of the README's "Your own model" section."""
    section = (ROOT / "README.md").read_text().split("## Your own model\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    shell = re.search(r"```\n(export MODELWATCH_MODEL_PATH.*?)```", section, re.S)
    assert python and shell, "the README's worked example has a Python block and a command block"
    lines = [line.split("#", 1)[0].strip() for line in shell.group(1).splitlines()]
    return python.group(1), [line for line in lines if line]


def test_a_users_own_model_is_registered_deployed_served_and_watched_as_the_readme_says(
    settings: Settings,
    collector: Collector,
    replicas: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, commands = readme_example()
    # The Python block, verbatim, with the user's directory on the path (cwd: the test's directory).
    monkeypatch.syspath_prepend(str(USER_MODELS))
    exec(compile(code, "README.md (Your own model)", "exec"), {"__name__": "train_shop_knn"})
    shop_knn = joblib.load("shop_knn.joblib")
    assert type(shop_knn).__module__ == "shop_knn"  # outside the project's packages

    # The version before it: the built-in recommender, on the same log.
    registry = Registry.from_settings(settings)
    earlier = World.generate(11, n_users=400, n_items=150).interactions(6000, seed=1).split_by_time(0.2)[0]
    v1 = registry.register(Recommender(n_components=4).fit(earlier), metrics={}, data_summary={}).version
    publish(settings, make("deploy", v1, "the built-in one first", issued_by="test"))
    with_path = {"MODELWATCH_MODEL_PATH": str(USER_MODELS)}
    serving = [replicas("serve-1", env=with_path), replicas("serve-2", env=with_path)]
    without: Replica = replicas("serve-x", env={"MODELWATCH_MODEL_PATH": ""})
    monitor = MonitorProcess(settings, write_config(tmp_path / "monitor.toml", MONITOR, [RULE]), tmp_path)
    wait_for(lambda: len(collector.events("activated")) == 3, 90, "three replicas serving v1")
    monitor.start()

    # The commands, as written: `export` sets the variable, the rest run as `modelwatch` does.
    assert commands[0] == "export MODELWATCH_MODEL_PATH=$PWD/tests/integration/user_models"
    monkeypatch.setenv("MODELWATCH_MODEL_PATH", str(USER_MODELS))
    capsys.readouterr()
    assert main(shlex.split(commands[1])[1:]) == 0
    v2 = capsys.readouterr().out.strip()
    manifest = registry.manifest(v2)
    assert manifest.model["class"] == "shop_knn.ShopKNN" and manifest.parent == v1
    assert manifest.metrics["f1"] is not None and manifest.metrics["f1"] > manifest.baseline["f1"]
    deploy = [arg.replace("VERSION", v2) for arg in shlex.split(commands[2])[1:]]
    try:
        # serve-x cannot import shop_knn: deploy says so, naming it, and exits 1 (README: deploys wait).
        assert main([*deploy, "--timeout", "90"]) == 1
        said = capsys.readouterr()
        assert "serve-x rejected it" in said.err + said.out and "'shop_knn'" in said.err + said.out
        [rejected] = wait_for(
            lambda: [e for e in collector.events("rejected", "serve-x") if e["model_version"] == v2],
            30,
            "serve-x's rejection",
        )
        assert f"cannot load {v2}" in rejected["error"]
        assert "its model's module 'shop_knn' cannot be imported" in rejected["error"]
        answers = collector.acked(rejected["command_id"])
        assert {i: e["event"] for i, e in answers.items()} == {
            "serve-1": "activated",
            "serve-2": "activated",
            "serve-x": "rejected",
        }

        # Requests, a third with a cart: the model takes contexts and never recommends what is in it.
        world = World.generate(11, n_users=400, n_items=150)
        requests = requests_of(world, REQUESTS, seed=7, tag="own")
        for i, r in enumerate(requests):
            if i % 3 == 0:
                r["context"] = {"in_cart": r["items"][:2]}
        produce(settings, encoded(requests))
        wait_for(lambda: len(collector.answered()) >= REQUESTS, 90, f"{REQUESTS} predictions")

        # Outcomes, so the monitor labels the predictions: what the model recommended is never bought, what
        # the previous version recommended is. The model's precision falls to 0, under half its baseline.
        storefront = Storefront(settings)
        answers = {p["request_id"]: p for p in collector.predictions()}
        for r in requests:
            p = answers[r["request_id"]]
            picked = p["recommended"]
            bought = (
                [i for i in r["items"] if i not in picked][:1] if p["model_version"] == v2 else picked[:1]
            )
            outcome = {"request_id": r["request_id"], "purchased": bought, "ts": r["ts"] + 500}
            storefront._send("outcomes", "outcome", r["request_id"], outcome)
        storefront.flush()
        metrics = wait_for(
            lambda: [m for m in read_events(settings, "metrics", "metrics") if m["model_version"] == v2],
            90,
            f"the monitor's metrics for {v2}",
            every=1.0,
        )
        history = wait_for(
            lambda: (h := read_history(settings)).active_version == v1 and h, 90, "the monitor's rollback"
        )
        wait_for(
            lambda: {e["instance"] for e in collector.events("activated") if e.get("command_id")
                     == history.applied[-1]["command_id"]} >= {"serve-1", "serve-2"},
            60,
            "serve-1 and serve-2 to serve the previous version again",
        )  # fmt: skip
    finally:
        monitor.stop()
    assert metrics[-1]["n"] > 0 and metrics[-1]["precision"] == 0.0
    rollback = history.applied[-1]
    alerts = [a for a in read_events(settings, "alerts", "alert") if a["state"] == "firing"]
    # serve-x's rejection is an alert too (the monitor watches what the fleet serves), for that version.
    assert {(a["rule"], a["model_version"]) for a in alerts} == {
        ("activation-rejected", v2),
        ("precision-drop", v2),
    }
    firing = next(a for a in alerts if a["alert_id"] == rollback.get("alert_id"))
    assert (firing["rule"], firing["model_version"], firing["value"]) == ("precision-drop", v2, 0.0)
    assert (rollback["action"], rollback["issued_by"]) == ("rollback", ISSUER)

    predictions = {p["request_id"]: p for p in collector.predictions()}
    assert not collector.dead()
    by_v2 = [r for r in requests if predictions[r["request_id"]]["model_version"] == v2]
    by_x = [r for r in requests if predictions[r["request_id"]]["instance"] == "serve-x"]
    assert by_v2 and by_x, "both the replicas with the model and the one without it served requests"
    assert {predictions[r["request_id"]]["instance"] for r in by_v2} == {"serve-1", "serve-2"}
    assert all(predictions[r["request_id"]]["model_version"] == v1 for r in by_x)  # the previous version

    # What the class computes for the same requests.
    expected = shop_knn.score_batch(
        [r["user_id"] for r in by_v2], [r["items"] for r in by_v2], [r.get("context", {}) for r in by_v2]
    )
    picks = shop_knn.select(expected, [r.get("k", settings.serve.default_k) for r in by_v2])
    for r, scores, pick in zip(by_v2, expected, picks, strict=True):
        p = predictions[r["request_id"]]
        assert p["scores"] == dict(zip(r["items"], np.round(scores, 6).tolist(), strict=True))
        assert p["recommended"] == [r["items"][j] for j in pick.tolist()]
        if "context" in r:
            assert not set(r["context"]["in_cart"]) & set(p["recommended"])
            assert all(p["scores"][item] == 0.0 for item in r["context"]["in_cart"])
    print(
        f"{len(by_v2)} requests served by shop_knn ({v2}) on serve-1 and serve-2, {len(by_x)} by {v1} on "
        f"serve-x; held-out F1 {manifest.metrics['f1']:.3f} (popularity {manifest.baseline['f1']:.3f}); "
        f"rolled back to {v1} by the monitor (alert {firing['alert_id']})"
    )
    for replica in (*serving, without):
        assert replica.proc.poll() is None, replica.log[-2000:]
    sys.modules.pop("shop_knn", None)  # imported from the user's directory for this test only
