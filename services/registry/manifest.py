"""A version's manifest: what the artifact is, how it did on held-out data, and who may vouch for it.

The manifest is JSON beside the artifact. Its ``sha256`` pins the artifact's bytes; its signatures pin the
manifest itself, so nobody without a signing key can swap both artifact and digest:

- ``signed_by``: an Ed25519 signature by a *publisher* key (:mod:`services.registry.keys`), checked against
  the keyring: who may verify cannot sign;
- ``signature`` (legacy): HMAC-SHA256 with the one shared ``signing_key``.

Both cover the canonical JSON (sorted keys, no whitespace) of everything but the two signature fields.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import platform
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson

from schemas.errors import VerificationError
from services.registry.keys import SIGNATURE_FIELDS, Keyring, Signer

#: Version names travel in commands from Kafka and become paths: nothing that could climb out of the root.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: Libraries whose versions decide whether a pickled model behaves the same.
TRACKED_LIBRARIES = ("numpy", "scipy", "scikit-learn", "joblib")


def running_libraries() -> dict[str, str]:
    """The versions this process runs with, as a manifest records them."""
    found = {"python": platform.python_version()}
    for name in (*TRACKED_LIBRARIES, "modelwatch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def library_mismatches(built_with: dict[str, str]) -> list[str]:
    """``"scikit-learn 1.5.0 (running 1.9.1)"`` for each tracked library that differs."""
    running = running_libraries()
    out = []
    for name in TRACKED_LIBRARIES:
        then, now = built_with.get(name), running.get(name)
        if then is not None and then != now:
            out.append(f"{name} {then} (running {now})")
    # Pickles follow the interpreter's minor version, not its patch level.
    then_py, now_py = built_with.get("python", ""), running["python"]
    if then_py and then_py.split(".")[:2] != now_py.split(".")[:2]:
        out.append(f"python {then_py} (running {now_py})")
    return out


@dataclass(frozen=True)
class Manifest:
    """One immutable registry version's description."""

    version: str
    created: str
    sha256: str
    size: int
    #: Held-out accuracy, precision, recall and F1: the baseline the monitor compares live windows with.
    metrics: dict[str, float | None]
    #: What the model was trained on (rows, sessions, users, items, time span, source).
    data: dict[str, Any]
    parent: str | None
    libraries: dict[str, str]
    #: The model's class, parameters and fitted threshold.
    model: dict[str, Any] = field(default_factory=dict)
    #: Held-out metrics of the popularity baseline on the same split, for comparison.
    baseline: dict[str, float | None] = field(default_factory=dict)
    signature: str | None = None
    #: The publisher's Ed25519 signature: ``{key_id, alg, value}``.
    signed_by: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        """The signed content: everything but the signatures."""
        out = asdict(self)
        for name in SIGNATURE_FIELDS:
            out.pop(name)
        return out

    def canonical(self) -> bytes:
        return orjson.dumps(self.body(), option=orjson.OPT_SORT_KEYS)

    def signed(self, key: str) -> Manifest:
        digest = hmac.new(key.encode(), self.canonical(), hashlib.sha256).hexdigest()
        return replace(self, signature=digest)

    def published_by(self, signer: Signer) -> Manifest:
        """This manifest with the publisher's signature."""
        return replace(self, signed_by=signer.sign("manifest", self.body()))

    def check_publisher(self, keyring: Keyring) -> None:
        """Raise :class:`VerificationError` unless a publisher key of ``keyring`` signed this manifest."""
        refused = keyring.refusal("manifest", self.as_dict(), "publish")
        if refused is not None:
            raise VerificationError(f"version {self.version}: manifest refused: {refused}")

    def check_signature(self, key: str) -> None:
        """Raise :class:`VerificationError` unless the manifest carries a valid signature for ``key``."""
        if not self.signature:
            raise VerificationError(
                f"version {self.version}: manifest is not signed, and a signing key is set"
            )
        expected = hmac.new(key.encode(), self.canonical(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.signature, expected):
            raise VerificationError(
                f"version {self.version}: manifest signature does not match "
                "(the manifest was altered, or signed with another key)"
            )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes, version: str) -> Manifest:
        """Parse a manifest that should describe ``version``; anything malformed is a verification error."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise VerificationError(f"version {version}: manifest is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise VerificationError(f"version {version}: manifest is not a JSON object")
        known = {f.name for f in fields(cls)}
        required = {"version", "created", "sha256", "size", "metrics", "data", "parent", "libraries"}
        missing = sorted(required - doc.keys())
        if missing:
            raise VerificationError(f"version {version}: manifest lacks {', '.join(missing)}")
        checks = {
            "version": isinstance(doc["version"], str),
            "created": isinstance(doc["created"], str),
            "sha256": isinstance(doc["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", doc["sha256"]),
            "size": isinstance(doc["size"], int) and doc["size"] >= 0,
            "metrics": isinstance(doc["metrics"], dict),
            "data": isinstance(doc["data"], dict),
            "parent": doc["parent"] is None or isinstance(doc["parent"], str),
            "libraries": isinstance(doc["libraries"], dict),
            "signature": doc.get("signature") is None or isinstance(doc.get("signature"), str),
            "signed_by": doc.get("signed_by") is None or isinstance(doc.get("signed_by"), dict),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise VerificationError(f"version {version}: manifest field(s) malformed: {', '.join(bad)}")
        if doc["version"] != version:
            raise VerificationError(
                f"version {version}: manifest describes version {doc['version']} (copied from elsewhere?)"
            )
        return cls(**{k: v for k, v in doc.items() if k in known})
