"""Keys per role: who may sign what, and the keyring of public keys that replicas and the monitor verify with.

Three roles sign, each with its own Ed25519 private key, held only where the role runs:

============  =====================================  ============================================
role          holds its private key                  may sign
============  =====================================  ============================================
publisher     ``train`` / ``models register``        a version's manifest (``publish``)
operator      the CLI (``deploy``, ``rollback``)     deploy, rollback, shadow, canary, promote, abort
monitor       the Faust monitor                      rollback, canary (a shadow's next stage),
                                                     promote, abort: never a version nobody
                                                     deployed before
============  =====================================  ============================================

Replicas and the monitor hold only the **keyring**: lines of ``<role> <key-id> <base64 public key>``
(``#`` starts a comment). The key id is the key's fingerprint (the first 16 hex digits of the sha256 of
the raw public key), checked when the keyring is read, so a line cannot give one key another's name.
Several keys per role may be listed at once: that is how a key is rotated (add the new one, move the
signers to it, remove the old one).

A signature is ``{"key_id", "alg": "ed25519", "value": <base64>}`` over the document's canonical JSON
(sorted keys, no whitespace, the signature fields left out), prefixed with what the document is
(``modelwatch/command/v1``, ``modelwatch/manifest/v1``), so a signature on one kind of document never
verifies as another. :meth:`Keyring.refusal` says why a signature does not authorise an action, or
``None`` when it does; every reason starts with one of :data:`REFUSALS`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import ConfigError
from services.config import Settings

Role = Literal["publisher", "operator", "monitor"]
ROLES: tuple[Role, ...] = ("publisher", "operator", "monitor")

#: What each role may sign. ``publish`` is a manifest; the others are command actions (the experiment
#: actions are listed now so that keyrings written today stay valid when those commands come).
MAY: dict[Role, frozenset[str]] = {
    "publisher": frozenset({"publish"}),
    "operator": frozenset({"deploy", "rollback", "shadow", "canary", "promote", "abort"}),
    "monitor": frozenset({"rollback", "canary", "promote", "abort"}),
}

ALG = "ed25519"
#: The document fields a signature covers everything but: the signatures themselves.
SIGNATURE_FIELDS = ("signature", "signed_by")

#: How every refusal starts, for people and for tests.
UNSIGNED, UNKNOWN_KEY, NOT_ALLOWED, BAD_SIGNATURE = (
    "unsigned",
    "unknown key",
    "role not allowed",
    "bad signature",
)
REFUSALS = (UNSIGNED, UNKNOWN_KEY, NOT_ALLOWED, BAD_SIGNATURE)


def fingerprint(public: Ed25519PublicKey) -> str:
    """A key's id: 16 hex digits of the sha256 of its raw 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_bytes(kind: str, document: dict[str, Any]) -> bytes:
    """What a signature of a ``kind`` document covers: the kind, then the canonical JSON without the
    signature fields."""
    body = {k: v for k, v in document.items() if k not in SIGNATURE_FIELDS}
    return f"modelwatch/{kind}/v1\n".encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Signer:
    """One role's private key, where that role runs."""

    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return fingerprint(self.private.public_key())

    def sign(self, kind: str, document: dict[str, Any]) -> dict[str, str]:
        """The ``signed_by`` object for ``document`` (``kind``: command or manifest)."""
        value = self.private.sign(signed_bytes(kind, document))
        return {"key_id": self.key_id, "alg": ALG, "value": base64.b64encode(value).decode()}

    @classmethod
    def load(cls, path: Path | str) -> Signer:
        """The private key in ``path`` (PEM, PKCS#8, as ``modelwatch keys generate`` writes it)."""
        try:
            data = Path(path).read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the private key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)


@dataclass(frozen=True)
class PublicKey:
    """One keyring line: a public key and the role it signs for."""

    role: Role
    key_id: str
    key: Ed25519PublicKey

    def line(self) -> str:
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"{self.role} {self.key_id} {base64.b64encode(raw).decode()}"


def parse_line(line: str, where: str) -> PublicKey | None:
    """One keyring line (``None`` for a blank or comment line); a malformed one is a :class:`ConfigError`."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    parts = text.split()
    if len(parts) != 3:
        raise ConfigError(f"keyring {where}: want '<role> <key-id> <base64 public key>', got {text!r}")
    role, key_id, encoded = parts
    if role not in ROLES:
        raise ConfigError(f"keyring {where}: unknown role {role!r} (roles: {', '.join(ROLES)})")
    try:
        raw = base64.b64decode(encoded, validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(
            f"keyring {where}: key {key_id} is not a base64 Ed25519 public key ({exc})"
        ) from exc
    if fingerprint(key) != key_id:
        raise ConfigError(
            f"keyring {where}: the key named {key_id} has the fingerprint {fingerprint(key)}; "
            "a key id is its fingerprint (as `modelwatch keys generate` prints it)"
        )
    return PublicKey(role, key_id, key)


class Keyring:
    """The public keys a replica or the monitor trusts, each for one role."""

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self.keys: dict[str, PublicKey] = {}
        for key in keys:
            known = self.keys.get(key.key_id)
            if known is not None and known.role != key.role:
                raise ConfigError(f"keyring: key {key.key_id} is listed as {known.role} and as {key.role}")
            self.keys[key.key_id] = key

    @classmethod
    def parse(cls, text: str, source: str = "inline") -> Keyring:
        lines = text.splitlines()
        found = (parse_line(line, f"{source} line {n}") for n, line in enumerate(lines, 1))
        return cls(k for k in found if k is not None)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"Keyring({', '.join(f'{k.role}:{k.key_id}' for k in self.keys.values())})"

    def refusal(
        self,
        kind: str,
        document: dict[str, Any],
        action: str,
        *,
        version: str | None = None,
        deployed: Collection[str] = (),
    ) -> str | None:
        """Why ``document`` (a ``kind`` document carrying ``signed_by``) does not authorise ``action``,
        or ``None`` when it does. ``version`` and ``deployed`` (the versions any earlier command named)
        let the monitor's key roll back, canary, promote or abort only to a version named before."""
        signed = document.get("signed_by")
        if signed is None:
            return f"{UNSIGNED}: the {kind} carries no signature, and a keyring is set"
        if not isinstance(signed, dict) or not all(
            isinstance(signed.get(f), str) for f in ("key_id", "alg", "value")
        ):
            return f"{BAD_SIGNATURE}: the {kind}'s signed_by is malformed"
        key = self.keys.get(signed["key_id"])
        if key is None:
            return f"{UNKNOWN_KEY}: {signed['key_id'][:64]!r} is not in the keyring"
        # The signature first: only a document its key really signed is judged by that key's role.
        if signed["alg"] != ALG:
            return f"{BAD_SIGNATURE}: algorithm {signed['alg'][:32]!r}, not {ALG}"
        try:
            value = base64.b64decode(signed["value"], validate=True)
            key.key.verify(value, signed_bytes(kind, document))
        except (binascii.Error, ValueError, InvalidSignature):
            return f"{BAD_SIGNATURE}: the {kind} does not match its signature by key {key.key_id} (altered?)"
        if action not in MAY[key.role]:
            return f"{NOT_ALLOWED}: key {key.key_id} has the {key.role} role, which may not {action}"
        if key.role == "monitor" and version is not None and version not in deployed:
            return (
                f"{NOT_ALLOWED}: key {key.key_id} is the monitor's, and the monitor may not order "
                f"{version}, which nobody deployed before"
            )
        return None


def load_keyring(file: Path | None, inline: Iterable[str]) -> Keyring | None:
    """The keyring from a file and inline lines together; ``None`` when neither gives a key (no keyring:
    signatures are not checked)."""
    keys: list[PublicKey] = []
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the keyring {file}: {exc}") from exc
        keys += Keyring.parse(text, str(file)).keys.values()
    for n, line in enumerate(inline, 1):
        key = parse_line(line, f"keys.keyring[{n - 1}]")
        if key is not None:
            keys.append(key)
    if file is None and not keys:
        return None
    if not keys:
        raise ConfigError(f"the keyring {file} lists no key: every signature would be refused")
    return Keyring(keys)


def generate(role: Role, out: Path) -> PublicKey:
    """A new key pair for ``role``: the private key written to ``out`` (mode 0600, never over an existing
    file), the public key returned (its :meth:`PublicKey.line` goes into the keyring)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        # O_EXCL: an existing key is never overwritten; 0600 from the start, not chmod after the write.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write the private key {out}: {exc}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = private.public_key()
    return PublicKey(role, fingerprint(public), public)


def keyring_of(settings: Settings) -> Keyring | None:
    """The keyring the settings name (``keys.keyring_file`` and ``keys.keyring``), or ``None``."""
    return load_keyring(settings.keys.keyring_file, settings.keys.keyring)


def signer_of(settings: Settings, role: Role) -> Signer | None:
    """The private key of ``role`` the settings name (``keys.<role>_key``), or ``None``."""
    path: Path | None = getattr(settings.keys, f"{role}_key")
    return Signer.load(path) if path is not None else None


__all__ = [
    "ALG",
    "BAD_SIGNATURE",
    "MAY",
    "NOT_ALLOWED",
    "REFUSALS",
    "ROLES",
    "UNKNOWN_KEY",
    "UNSIGNED",
    "Keyring",
    "PublicKey",
    "Role",
    "Signer",
    "generate",
    "keyring_of",
    "load_keyring",
    "signed_bytes",
    "signer_of",
]
