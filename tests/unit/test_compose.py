"""No Docker engine runs here: check that docker-compose.yml parses and wires the services."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.config import BrokerSettings
from services.sandbox.broker import LocalCluster
from services.sandbox.listeners import anonymous_super_user_exposure

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_parses_and_names_the_services() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"kafka", "topics", "serve-1", "serve-2", "monitor"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:3.9")
    for name in ("serve-1", "serve-2", "monitor"):
        env = services[name]["environment"]
        assert env["MODELWATCH_BOOTSTRAP"] == "kafka:9092"
        assert "topics" in services[name]["depends_on"]


def test_the_secure_profile_mirrors_the_local_scram_broker_and_its_acls() -> None:
    from services.kafka.acls import ROLES

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    secure = {name: s for name, s in services.items() if "secure" in s.get("profiles", [])}
    assert not any(
        services[name].get("profiles") for name in ("kafka", "topics", "serve-1", "serve-2", "monitor")
    )
    broker = "\n".join(secure["kafka-secure"]["command"])
    for line in (
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        "super.users=User:admin;User:ANONYMOUS",
        # ... which is safe only because the PLAINTEXT controller listener is on loopback:
        "listeners=CLIENT://:9092,CONTROLLER://127.0.0.1:9093",
        "controller.quorum.voters=1@127.0.0.1:9093",
    ):
        assert line in broker
    properties = broker.split("cat > /tmp/server.properties <<EOF", 1)[1].split("EOF", 1)[0]
    assert "super.users=User:admin;User:ANONYMOUS" in properties
    assert anonymous_super_user_exposure(properties) == []
    assert {user for user in ROLES if f"name={user}," in broker} == set(ROLES)  # every role's SCRAM user
    assert "modelwatch acls apply" in secure["secure-setup"]["command"]
    principals = {
        name: s["environment"]["MODELWATCH_SASL_USERNAME"]
        for name, s in secure.items()
        if name != "kafka-secure"
    }
    assert principals == {
        "secure-setup": "admin",
        "secure-serve-1": "service",
        "secure-serve-2": "service",
        "secure-monitor": "monitor",
        "secure-operator": "operator",
        "secure-storefront": "storefront",
    }
    for name in principals:
        env = secure[name]["environment"]
        assert env["MODELWATCH_BOOTSTRAP"] == "kafka-secure:9092"
        assert (env["MODELWATCH_SECURITY_PROTOCOL"], env["MODELWATCH_SASL_MECHANISM"]) == (
            "SASL_PLAINTEXT",
            "SCRAM-SHA-256",
        )
        assert "topics" not in secure[name].get("depends_on", {})  # never waits on the plain broker's setup


def test_an_anonymous_super_user_is_refused_on_any_listener_reachable_from_outside() -> None:
    base = (
        "super.users=User:admin;User:ANONYMOUS\n"
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT\n"
    )
    for listeners, exposed in [
        ("CLIENT://:9092,CONTROLLER://:9093", ["CONTROLLER://:9093"]),  # the secure profile before issue 18
        ("CLIENT://:9092,CONTROLLER://0.0.0.0:9093", ["CONTROLLER://0.0.0.0:9093"]),
        ("CLIENT://:9092,CONTROLLER://kafka-secure:9093", ["CONTROLLER://kafka-secure:9093"]),
        ("CLIENT://:9092,CONTROLLER://127.0.0.1:9093", []),
        ("CLIENT://:9092,CONTROLLER://[::1]:9093", []),
    ]:
        assert anonymous_super_user_exposure(f"{base}listeners={listeners}\n") == exposed
    # Without ANONYMOUS among the super users there is nothing to expose.
    plain = "super.users=User:admin\nlisteners=PLAINTEXT://:9092,CONTROLLER://:9093\n"
    assert anonymous_super_user_exposure(plain) == []


def test_the_local_secure_broker_keeps_its_controller_on_loopback(tmp_path: Path) -> None:
    for nodes in (1, 3):
        cluster = LocalCluster(
            BrokerSettings(port=39092, data_dir=tmp_path / str(nodes)),
            nodes=nodes,
            scram_users={"admin": "x"},
        )
        for node in cluster.nodes:
            properties = cluster._properties(node)
            assert "super.users=User:admin;User:ANONYMOUS" in properties
            assert f"CONTROLLER://127.0.0.1:{node.controller_port}" in properties
            assert anonymous_super_user_exposure(properties) == []


def test_every_replica_serves_its_probes_and_docker_checks_readyz() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    replicas = [name for name, s in services.items() if " serve " in s.get("command", "")]
    assert sorted(replicas) == ["secure-serve-1", "secure-serve-2", "serve-1", "serve-2"]
    for name in replicas:
        port = services[name]["command"].split("--metrics-port ")[1].split()[0].strip('"')
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and f"http://127.0.0.1:{port}/readyz" in check["test"][-1]
        assert check["start_period"] and check["retries"] >= 1


def test_every_monitor_serves_its_probes_and_docker_checks_readyz() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    monitors = [name for name, s in services.items() if "modelwatch monitor" in s.get("command", "")]
    assert sorted(monitors) == ["monitor", "secure-monitor"]
    for name in monitors:
        port = services[name]["command"].split("--metrics-port ")[1].split()[0].strip('"')
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and f"http://127.0.0.1:{port}/readyz" in check["test"][-1]
        assert check["start_period"] == "300s" and check["retries"] >= 1


def test_the_monitoring_profile_mounts_the_shipped_files_and_scrapes_the_services() -> None:
    root = COMPOSE.parent
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    monitoring = {name for name, s in services.items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "alertmanager", "grafana"}
    for name in monitoring:
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert source.startswith("./") and (root / source).is_file(), (name, volume)
    scrape = yaml.safe_load((root / "services/ops/monitoring/prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t.split(":")[0] for c in job["static_configs"] for t in c["targets"]}
        for job in scrape["scrape_configs"]
    }
    assert targets == {"modelwatch-serve": {"serve-1", "serve-2"}, "modelwatch-monitor": {"monitor"}}
    for job, hosts in targets.items():
        for host in hosts:
            assert "--metrics-port 9100" in services[host]["command"], (job, host)
