"""Several models side by side on the real broker: two replicas serve ``home`` and ``cart`` at once, each
request routed by its ``model`` field; one monitor per model. A bad version of ``cart`` (trained on
degraded labels, and whose recommendations the storefront then never buys) is rolled back by the cart
monitor while ``home`` serves on untouched: no command of home's, no version change, its own metrics and no
alert. Every prediction names its model; a request for a model no replica serves is dead-lettered, named."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from services.cli import main
from services.config import Settings
from services.deployment.commands import read_history
from services.model.recommender import Recommender
from services.model.training import degrade_labels
from services.registry import Registry
from services.sandbox.world import World
from streams.rollback import ISSUER
from tests.integration.monitor_support import (
    ROLLBACK_MONITOR,
    ROLLBACK_RULE,
    MonitorProcess,
    Storefront,
    read_events,
    write_config,
)
from tests.integration.serving_support import Collector, encoded, produce, requests_of, wait_for

MODELS = ("--model", "home", "--model", "cart")
PER_MODEL = 120


def asking(model: str | None, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**r, "request_id": f"{model}-{r['request_id']}", **({"model": model} if model else {})}
        for r in requests
    ]


def deploy(settings: Settings, version: str, model: str, *more: str) -> None:
    assert main(["deploy", version, "--model", model, *more]) == 0


def test_two_models_side_by_side_a_bad_cart_is_rolled_back_and_home_serves_on(
    settings: Settings, collector: Collector, replicas: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    home, cart = settings.for_model("home"), settings.for_model("cart")
    world = World.generate(11, n_users=400, n_items=150)
    log = world.interactions(3000, seed=1)
    h1 = Registry.from_settings(home).register(
        Recommender(n_components=4).fit(log), metrics={}, data_summary={}
    )
    cart_registry = Registry.from_settings(cart)
    c1 = cart_registry.register(Recommender(n_components=4).fit(log), metrics={}, data_summary={})
    degraded = Recommender(n_components=4).fit(degrade_labels(log, 0.8, seed=3))
    c2 = cart_registry.register(degraded, metrics={}, data_summary={}, parent=c1.version)
    assert Path(cart_registry.model_root, c2.version).is_dir()  # <registry>/models/cart/<version>
    deploy(settings, h1.version, "home", "--no-wait")
    deploy(settings, c1.version, "cart", "--no-wait")

    config = write_config(tmp_path / "monitor.toml", ROLLBACK_MONITOR, [ROLLBACK_RULE])
    monitors = {
        m: MonitorProcess(settings, config, tmp_path, args=["--model", m], name=f"monitor-{m}")
        for m in ("home", "cart")
    }
    try:
        # Both monitors and both replicas start at once; each waited for after.
        for monitor in monitors.values():
            monitor.start(wait=False)
        serving = [replicas("serve-1", *MODELS), replicas("serve-2", *MODELS)]
        wait_for(
            lambda: (
                {(e["instance"], e.get("model")) for e in collector.events("activated")}
                >= {(r, m) for r in ("serve-1", "serve-2") for m in ("home", "cart")}
            ),
            90,
            "both replicas serving both models",
        )
        for monitor in monitors.values():
            monitor.wait_ready()
        # The bad cart version, waited for by the replicas serving cart, and only by them.
        deploy(settings, c2.version, "cart", "--timeout", "60")
        deploy_c2 = read_history(cart).applied[-1]
        assert deploy_c2["model"] == "cart" and deploy_c2["model_version"] == c2.version

        requests = requests_of(world, PER_MODEL, seed=7)
        traffic = [
            r for pair in zip(asking("home", requests), asking("cart", requests), strict=True) for r in pair
        ]
        strays = asking(None, requests[:3]) + asking("search", requests[:2])  # no model: the default's
        produce(settings, encoded(traffic + strays))
        wait_for(lambda: len(collector.answered()) >= len(traffic), 60, f"{len(traffic)} predictions")

        # The storefront buys everything home recommended; of cart's bad version's recommendations, one
        # every other request, and four items it did not recommend (its F1 about 0.15, home's 1).
        storefront = Storefront(settings)
        answers = {p["request_id"]: p for p in collector.predictions()}
        for n, r in enumerate(traffic):
            p = answers[r["request_id"]]
            bought = list(p["recommended"])
            if p["model"] == "cart":
                missed = [i for i in r["items"] if i not in p["recommended"]][:4]
                bought = bought[:1] + missed if n % 4 == 1 else missed
            outcome = {"request_id": r["request_id"], "purchased": bought, "ts": r["ts"] + 500}
            if p["model"] == "home":  # the cart monitor skips it; cart's name none: both monitors take them
                outcome["model"] = "home"
            storefront._send("outcomes", "outcome", r["request_id"], outcome)
        storefront.flush()
        history = wait_for(
            lambda: (h := read_history(cart)).active_version == c1.version and h,
            90,
            "the cart monitor's rollback",
        )
        rollback = history.applied[-1]
        wait_for(
            lambda: set(collector.acked(rollback["command_id"])) >= {"serve-1", "serve-2"},
            60,
            "both replicas back on the good cart version",
        )
        # Home serves on, untouched: a second round of its requests, still its one version.
        after = asking("home", requests_of(world, 40, seed=8, tag="after"))
        produce(settings, encoded(after))
        wait_for(
            lambda: {r["request_id"] for r in after} <= collector.answered(), 60, "home's later requests"
        )
        answers = {p["request_id"]: p for p in collector.predictions()}
        for r in after:
            outcome = {"request_id": r["request_id"], "purchased": answers[r["request_id"]]["recommended"],
                       "ts": r["ts"] + 500}  # fmt: skip
            storefront._send("outcomes", "outcome", r["request_id"], outcome)
        storefront.flush()
        home_metrics = wait_for(
            lambda: [
                m
                for m in read_events(settings, "metrics", "metrics")
                if m["model_version"] == h1.version and m["total"] == PER_MODEL + len(after)
            ],
            60,
            "the home monitor's metrics of all home's requests",
            every=1.0,
        )
    finally:
        for monitor in monitors.values():
            monitor.stop()

    # The rollback: cart's own, by its monitor, for an alert on the bad version, naming cart.
    assert (rollback["action"], rollback["issued_by"], rollback["model"]) == ("rollback", ISSUER, "cart")
    assert [c["model_version"] for c in read_history(home).applied] == [h1.version]  # home: one deploy, ever
    assert [c["model_version"] for c in read_history(cart).applied] == [c1.version, c2.version, c1.version]

    # Every prediction names its model; home's all came from its one version, on both replicas.
    predictions = collector.predictions()
    by_model = {m: [p for p in predictions if p["model"] == m] for m in ("home", "cart")}
    assert len(by_model["home"]) + len(by_model["cart"]) == len(predictions) == len(traffic) + len(after)
    assert {p["model_version"] for p in by_model["home"]} == {h1.version}
    assert {p["instance"] for p in by_model["home"]} == {"serve-1", "serve-2"}
    assert {p["model_version"] for p in by_model["cart"]} == {c2.version}

    # The strays: dead-lettered with the model named and the reason; nothing else was.
    dead = collector.dead()
    assert sorted(d["model"] for d in dead) == ["recommender"] * 3 + ["search"] * 2
    assert all("this replica does not serve model" in d["error"] and "home, cart" in d["error"] for d in dead)

    # Metrics and alerts per model: each monitor wrote only its model's, and named it.
    metrics = read_events(settings, "metrics", "metrics")
    assert {(m["model"], m["model_version"]) for m in metrics} <= {("home", h1.version), ("cart", c2.version)}
    assert home_metrics[-1]["model"] == "home" and home_metrics[-1]["f1"] == 1.0
    alerts = read_events(settings, "alerts", "alert")
    assert alerts and {(a["model"], a["model_version"]) for a in alerts} == {("cart", c2.version)}
    assert rollback["alert_id"] in {a["alert_id"] for a in alerts if a["state"] == "firing"}
    for replica in serving:
        assert replica.proc.poll() is None, replica.log[-2000:]
    print(
        f"{len(by_model['home'])} home and {len(by_model['cart'])} cart predictions on two replicas, "
        f"{len(dead)} strays dead-lettered; cart {c2.version} rolled back to {c1.version} by its monitor; "
        f"home F1 {home_metrics[-1]['f1']:.3f}; {time.monotonic() - started:.0f} s"
    )
