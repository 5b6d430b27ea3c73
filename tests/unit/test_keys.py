"""Keys per role: the keyring, what each role may sign, and every reason a signature is refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from services.cli import main
from services.config import load_settings
from services.registry.keys import (
    BAD_SIGNATURE,
    NOT_ALLOWED,
    UNKNOWN_KEY,
    UNSIGNED,
    Keyring,
    PublicKey,
    Signer,
    generate,
    keyring_of,
    load_keyring,
    signer_of,
)


def _pair(tmp_path: Path, role: str, name: str | None = None) -> tuple[Signer, PublicKey]:
    path = tmp_path / f"{name or role}.pem"
    public = generate(role, path)  # type: ignore[arg-type]
    return Signer.load(path), public


def _keyring(*keys: PublicKey) -> Keyring:
    return Keyring.parse("\n".join(k.line() for k in keys))


COMMAND = {"command_id": "c-1", "action": "deploy", "model_version": "v2", "reason": "r", "ts": 1}


def _signed(signer: Signer, doc: dict[str, object], kind: str = "command") -> dict[str, object]:
    return {**doc, "signed_by": signer.sign(kind, doc)}


def test_generate_writes_a_private_key_only_its_owner_reads_and_never_over_another(tmp_path: Path) -> None:
    path = tmp_path / "operator.pem"
    public = generate("operator", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Signer.load(path).key_id == public.key_id
    with pytest.raises(ConfigError, match="File exists"):
        generate("operator", path)
    assert Signer.load(path).key_id == public.key_id  # the first key is still there


def test_the_cli_prints_the_keyring_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "monitor.pem"
    assert main(["keys", "generate", "--role", "monitor", "--out", str(path)]) == 0
    line = capsys.readouterr().out.strip()
    [key] = Keyring.parse(line).keys.values()
    assert key.role == "monitor" and key.key_id == Signer.load(path).key_id
    assert main(["keys", "generate", "--role", "root", "--out", str(tmp_path / "x.pem")]) == 2


def test_each_role_signs_only_what_it_may(tmp_path: Path) -> None:
    publisher, pub = _pair(tmp_path, "publisher")
    operator, op = _pair(tmp_path, "operator")
    monitor, mon = _pair(tmp_path, "monitor")
    ring = _keyring(pub, op, mon)
    manifest = {"version": "v2", "sha256": "0" * 64}
    assert ring.refusal("manifest", _signed(publisher, manifest, "manifest"), "publish") is None
    refused = ring.refusal("manifest", _signed(operator, manifest, "manifest"), "publish")
    assert (
        refused is not None
        and refused.startswith(NOT_ALLOWED)
        and "operator role, which may not publish" in refused
    )

    assert ring.refusal("command", _signed(operator, COMMAND), "deploy") is None
    refused = ring.refusal("command", _signed(publisher, COMMAND), "deploy")
    assert refused is not None and refused.startswith(NOT_ALLOWED)
    refused = ring.refusal("command", _signed(monitor, COMMAND), "deploy", version="v2", deployed=["v2"])
    assert refused is not None and "monitor role, which may not deploy" in refused

    rollback = {**COMMAND, "action": "rollback", "model_version": "v1"}
    assert (
        ring.refusal("command", _signed(monitor, rollback), "rollback", version="v1", deployed=["v1"]) is None
    )
    refused = ring.refusal("command", _signed(monitor, rollback), "rollback", version="v1", deployed=["v2"])
    assert refused is not None and refused.startswith(NOT_ALLOWED) and "nobody deployed before" in refused
    # An operator may name any version (rollback --to).
    assert ring.refusal("command", _signed(operator, rollback), "rollback", version="v1", deployed=[]) is None


def test_unsigned_unknown_and_bad_signatures_are_refused_with_the_reason(tmp_path: Path) -> None:
    operator, op = _pair(tmp_path, "operator")
    stranger, _ = _pair(tmp_path, "operator", "stranger")
    ring = _keyring(op)
    assert str(ring.refusal("command", COMMAND, "deploy")).startswith(UNSIGNED)
    assert str(ring.refusal("command", _signed(stranger, COMMAND), "deploy")).startswith(UNKNOWN_KEY)
    altered = {**_signed(operator, COMMAND), "model_version": "evil"}
    assert str(ring.refusal("command", altered, "deploy")).startswith(BAD_SIGNATURE)
    # A manifest's signature never verifies as a command's, even over the same fields.
    as_manifest = {**COMMAND, "signed_by": operator.sign("manifest", COMMAND)}
    assert str(ring.refusal("command", as_manifest, "deploy")).startswith(BAD_SIGNATURE)
    for bad in ("x", {"key_id": op.key_id}, {"key_id": op.key_id, "alg": "rsa", "value": "AA=="}):
        assert str(ring.refusal("command", {**COMMAND, "signed_by": bad}, "deploy")).startswith(BAD_SIGNATURE)
    garbage = {"key_id": op.key_id, "alg": "ed25519", "value": "not base64!"}
    assert str(ring.refusal("command", {**COMMAND, "signed_by": garbage}, "deploy")).startswith(BAD_SIGNATURE)


def test_rotation_is_two_keys_of_one_role_at_once(tmp_path: Path) -> None:
    old, old_pub = _pair(tmp_path, "operator", "old")
    new, new_pub = _pair(tmp_path, "operator", "new")
    both = _keyring(old_pub, new_pub)
    assert both.refusal("command", _signed(old, COMMAND), "deploy") is None
    assert both.refusal("command", _signed(new, COMMAND), "deploy") is None
    rotated = _keyring(new_pub)
    assert str(rotated.refusal("command", _signed(old, COMMAND), "deploy")).startswith(UNKNOWN_KEY)
    assert rotated.refusal("command", _signed(new, COMMAND), "deploy") is None


def test_malformed_keyrings_are_refused_at_start(tmp_path: Path) -> None:
    _, op = _pair(tmp_path, "operator")
    _role, key_id, b64 = op.line().split()
    for text, message in [
        (f"root {key_id} {b64}", "unknown role 'root'"),
        (f"operator {key_id}", "want '<role> <key-id> <base64 public key>'"),
        (f"operator {key_id} AAAA", "not a base64 Ed25519 public key"),
        (f"operator 0123456789abcdef {b64}", "a key id is its fingerprint"),
        (f"operator {key_id} {b64}\nmonitor {key_id} {b64}", "listed as operator and as monitor"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Keyring.parse(text)
    empty = tmp_path / "empty.keyring"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="lists no key"):
        load_keyring(empty, [])
    assert load_keyring(None, []) is None


def test_settings_name_the_keyring_and_the_private_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pub = _pair(tmp_path, "publisher")
    operator, op = _pair(tmp_path, "operator")
    ring_file = tmp_path / "keyring"
    ring_file.write_text(f"# who may sign\n{pub.line()}  # the build host\n")
    monkeypatch.setenv("MODELWATCH_KEYS__KEYRING_FILE", str(ring_file))
    monkeypatch.setenv("MODELWATCH_KEYS__KEYRING", f'["{op.line()}"]')
    monkeypatch.setenv("MODELWATCH_KEYS__OPERATOR_KEY", str(tmp_path / "operator.pem"))
    settings = load_settings()
    ring = keyring_of(settings)
    assert ring is not None and set(ring.keys) == {pub.key_id, op.key_id}
    signer = signer_of(settings, "operator")
    assert signer is not None and signer.key_id == operator.key_id
    assert signer_of(settings, "monitor") is None
    (tmp_path / "not-a-key.pem").write_text("hello")
    monkeypatch.setenv("MODELWATCH_KEYS__MONITOR_KEY", str(tmp_path / "not-a-key.pem"))
    with pytest.raises(ConfigError, match="cannot read the private key"):
        signer_of(load_settings(), "monitor")
