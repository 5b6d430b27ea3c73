"""The Apache Kafka broker's jars, fetched from Maven Central with ``mvn`` into a cache outside the
repository.

:func:`ensure_jars` fetches ``org.apache.kafka:kafka_2.13`` and a logging binding once per Kafka version,
into ``<jar_cache>/<kafka_version>/lib``: the classpath :class:`services.sandbox.broker.LocalCluster` runs.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from schemas.errors import BrokerError
from services.config import BrokerSettings

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>modelwatch</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version>
    </dependency>
    <!-- Kafka 3.9 logs through slf4j 1.x to reload4j, which core only compiles against. -->
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>1.2.25</version>
    </dependency>
  </dependencies>
</project>
"""


def ensure_jars(settings: BrokerSettings, say: Callable[[str], None] = print) -> Path:
    """The directory holding the broker's classpath, fetched with ``mvn`` on first use."""
    home = settings.jar_cache / settings.kafka_version
    lib = home / "lib"
    done = home / ".complete"
    if done.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH: it fetches the Kafka jars from Maven Central")
    if shutil.which("java") is None:
        raise BrokerError("java is not on PATH: the broker needs JDK 17")
    home.mkdir(parents=True, exist_ok=True)
    # One fetch at a time: two processes starting brokers at once (the tests' two workers) would otherwise
    # both run mvn into the same directory; the second waits, then finds the jars complete.
    with (home / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return lib
        (home / "pom.xml").write_text(_POM.format(version=settings.kafka_version))
        say(f"fetching Apache Kafka {settings.kafka_version} jars from Maven Central into {lib} (once) ...")
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            cwd=home,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise BrokerError(f"mvn could not fetch kafka_2.13:{settings.kafka_version}: " + " | ".join(tail))
        done.write_text(settings.kafka_version)
    return lib
