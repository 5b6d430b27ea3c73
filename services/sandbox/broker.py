"""A real Apache Kafka broker on this machine, without Docker: jars from Maven Central, KRaft mode.

``LocalCluster`` fetches ``org.apache.kafka:kafka_2.13`` and a logging binding with ``mvn`` into a cache
outside the repository (once), formats storage on first start, and runs one or three combined
broker+controller nodes on 127.0.0.1. Node *i* (from 1) listens for clients on ``port + 2*(i-1)`` and for
the controller quorum on the port after it. The layout and pids are kept in ``<data_dir>/cluster.json``.

The jars come from :mod:`services.sandbox.kafka_jars`; each node's ports, directory and process from
:mod:`services.sandbox.kafka_node`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from schemas.errors import BrokerError
from services.config import BrokerSettings
from services.sandbox.kafka_jars import ensure_jars
from services.sandbox.kafka_node import Node, alive, port_open, reap
from services.sandbox.listeners import anonymous_super_user_exposure

_LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


class LocalCluster:
    """One or three local KRaft nodes, described by ``<data_dir>/cluster.json``."""

    def __init__(
        self, settings: BrokerSettings, nodes: int = 1, scram_users: dict[str, str] | None = None
    ) -> None:
        """``scram_users`` (name: password) turns on SASL/SCRAM-SHA-256 and ACLs on the client listener;
        the user named ``admin`` is the super user that the brokers themselves log in as."""
        if nodes not in (1, 3):
            raise BrokerError(f"--nodes must be 1 or 3, not {nodes}")
        self.settings = settings
        self.dir = settings.data_dir
        self.state_file = self.dir / "cluster.json"
        state = self._read_state()
        if state and state["nodes"] != nodes and self._any_running(state):
            raise BrokerError(
                f"a {state['nodes']}-node cluster is running from {self.dir}; stop it first "
                "(modelwatch broker stop) or use another --data-dir"
            )
        if state and state["nodes"] == nodes and state["port"] == settings.port:
            self.cluster_id: str | None = state["cluster_id"]
            pids = state.get("pids", {})
        else:
            self.cluster_id = None
            pids = {}
        self.nodes = [
            Node(
                node_id=i,
                port=settings.port + 2 * (i - 1),
                controller_port=settings.port + 2 * (i - 1) + 1,
                directory=self.dir / f"node-{i}",
                pid=pids.get(str(i)),
            )
            for i in range(1, nodes + 1)
        ]
        if scram_users is None and state and state.get("secure"):
            # A cluster formatted with SCRAM users stays secure on every later start.
            scram_users = json.loads((self.dir / "scram-users.json").read_text())
        if scram_users is not None and "admin" not in scram_users:
            raise BrokerError("SCRAM users must include 'admin', the brokers' own principal")
        self.sasl = scram_users

    @classmethod
    def existing(cls, settings: BrokerSettings) -> LocalCluster:
        """The cluster described on disk (one node if none was ever started)."""
        state_file = settings.data_dir / "cluster.json"
        nodes = 1
        if state_file.exists():
            state = json.loads(state_file.read_text())
            nodes = state["nodes"]
            settings = settings.model_copy(update={"port": state["port"]})
        return cls(settings, nodes)

    # -- state -------------------------------------------------------------------------------------------
    def _read_state(self) -> dict | None:
        if self.state_file.exists():
            state: dict = json.loads(self.state_file.read_text())
            return state
        return None

    @staticmethod
    def _any_running(state: dict) -> bool:
        return any(alive(pid) for pid in state.get("pids", {}).values())

    def _write_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "nodes": len(self.nodes),
            "port": self.settings.port,
            "cluster_id": self.cluster_id,
            "kafka_version": self.settings.kafka_version,
            "secure": bool(self.sasl),
            "pids": {str(n.node_id): n.pid for n in self.nodes if n.pid},
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    # -- configuration -----------------------------------------------------------------------------------
    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = len(self.nodes)
        min_isr = 2 if replicas == 3 else 1
        client_proto = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        lines = [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=CLIENT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=CLIENT://127.0.0.1:{node.port}",
            "inter.broker.listener.name=CLIENT",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CLIENT:{client_proto},CONTROLLER:PLAINTEXT",
            f"log.dirs={node.directory / 'data'}",
            f"num.partitions={6}",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={replicas}",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={min_isr}",
            # Tests and demos start consumer groups often; do not wait 3 s for more members.
            "group.initial.rebalance.delay.ms=0",
            # Small local machine: fewer threads, and segments that roll and clean up sooner.
            "num.network.threads=2",
            "num.io.threads=4",
            "log.segment.bytes=104857600",
            "auto.create.topics.enable=false",
        ]
        if self.sasl:
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-256",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                # The controller quorum talks PLAINTEXT, as User:ANONYMOUS, which must be a super user for
                # the quorum's own requests: safe only because that listener binds 127.0.0.1 (checked below).
                "super.users=User:admin;User:ANONYMOUS",
                "allow.everyone.if.no.acl.found=false",
                "listener.name.client.scram-sha-256.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="admin" password="{self.sasl["admin"]}";',
            ]
        text = "\n".join(lines) + "\n"
        exposed = anonymous_super_user_exposure(text)
        if exposed:
            raise BrokerError(
                f"User:ANONYMOUS would be a super user on {', '.join(exposed)}: bind it to 127.0.0.1"
            )
        return text

    def _java(self, lib: Path, node: Node, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.settings.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{node.directory / 'log4j.properties'}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 90.0, say: Callable[[str], None] = print) -> str:
        """Start every node that is not running; return the bootstrap string once metadata answers."""
        if all(n.running for n in self.nodes):
            self._wait_ready(timeout, say)
            return self.bootstrap
        for n in self.nodes:
            if not n.running and (port_open(n.port) or port_open(n.controller_port)):
                raise BrokerError(
                    f"port {n.port} or {n.controller_port} is in use by another process; "
                    "choose another with --port"
                )
        lib = ensure_jars(self.settings, say)
        if self.cluster_id is None:
            out = subprocess.run(
                ["java", "-cp", f"{lib}/*", "kafka.tools.StorageTool", "random-uuid"],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise BrokerError(f"kafka StorageTool random-uuid failed: {out.stderr.strip()[-300:]}")
            self.cluster_id = out.stdout.strip().splitlines()[-1]
        for n in self.nodes:
            if n.running:
                continue
            self._start_node(lib, n)
        self._write_state()
        self._wait_ready(timeout, say)
        return self.bootstrap

    def _start_node(self, lib: Path, n: Node) -> None:
        assert self.cluster_id is not None
        n.directory.mkdir(parents=True, exist_ok=True)
        props = n.directory / "server.properties"
        props.write_text(self._properties(n))
        (n.directory / "log4j.properties").write_text(_LOG4J.format(log=n.log))
        if not (n.directory / "data" / "meta.properties").exists():
            fmt = ["format", "-t", self.cluster_id, "-c", str(props)]
            if self.sasl:
                for user, password in self.sasl.items():
                    fmt += ["--add-scram", f"SCRAM-SHA-256=[name={user},password={password}]"]
            out = subprocess.run(
                self._java(lib, n, "kafka.tools.StorageTool", *fmt), capture_output=True, text=True
            )
            if out.returncode != 0:
                raise BrokerError(
                    f"formatting node {n.node_id} failed: {out.stdout[-300:]}{out.stderr[-300:]}"
                )
        with open(n.directory / "stdout.log", "ab") as stdout:
            proc = subprocess.Popen(
                self._java(lib, n, "kafka.Kafka", str(props)),
                stdout=stdout,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it
            )
        n.pid = proc.pid

    def _wait_ready(self, timeout: float, say: Callable[[str], None]) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap}
        if self.sasl:
            conf.update(
                {
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "SCRAM-SHA-256",
                    "sasl.username": "admin",
                    "sasl.password": self.sasl["admin"],
                }
            )
        clients: list[AdminClient] = []
        # Each node asked alone: every broker must know every other before the cluster is ready. A broker
        # learns the others' registrations from the metadata log a moment after the controller, and a
        # client that asks a lagging one then sees fewer brokers (a tool counting them would count two).
        own = [{**conf, "bootstrap.servers": f"127.0.0.1:{n.port}"} for n in self.nodes]
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if not n.running]
            if dead:
                n = dead[0]
                raise BrokerError(
                    f"broker node {n.node_id} exited during start; see {n.log}: {self._tail(n)}"
                )
            if not all(port_open(n.port) for n in self.nodes):
                time.sleep(0.2)
                continue
            # Created only once every port listens, so librdkafka has no refused connections to log.
            clients = clients or [AdminClient(c) for c in own]
            try:
                if all(len(c.list_topics(timeout=2).brokers) == len(self.nodes) for c in clients):
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise BrokerError(
            f"the broker did not answer metadata requests within {timeout:.0f}s; see {self.dir}"
        )

    @staticmethod
    def _tail(n: Node) -> str:
        for f in (n.directory / "stdout.log", n.log):
            if f.exists():
                lines = [
                    ln
                    for ln in f.read_text(errors="replace").splitlines()
                    if "ERROR" in ln or "Exception" in ln
                ]
                if lines:
                    return lines[-1][-300:]
        return "no log"

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop every running node cleanly (SIGTERM: controlled shutdown), SIGKILL after ``timeout``."""
        stopped = []
        for n in self.nodes:
            if n.running and n.pid:
                os.kill(n.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            while n.running and time.monotonic() < deadline:
                time.sleep(0.1)
            if n.running and n.pid:
                os.kill(n.pid, signal.SIGKILL)
            if n.pid:
                stopped.append(n.node_id)
                reap(n.pid)
            n.pid = None
        self._write_state()
        return stopped

    def discard(self) -> None:
        """Delete every node's data (not its logs) and the cluster's description: the next start formats a
        new cluster.

        Only for a stopped cluster whose data nobody needs (the test broker): a broker loads every log it
        holds before it answers, so a directory kept across many runs starts ever more slowly."""
        if any(n.running for n in self.nodes):
            raise BrokerError(f"the cluster in {self.dir} is running; stop it before discarding its data")
        for n in self.nodes:
            shutil.rmtree(n.directory / "data", ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self.cluster_id = None

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        n = self.nodes[node_id - 1]
        if n.pid and n.running:
            os.kill(n.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while n.running and time.monotonic() < deadline:
                reap(n.pid)
                time.sleep(0.05)
        n.pid = None
        self._write_state()

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "node": n.node_id,
                "pid": n.pid if n.running else None,
                "running": n.running,
                "port": n.port,
                "answers": port_open(n.port),
                "log": str(n.log),
            }
            for n in self.nodes
        ]
