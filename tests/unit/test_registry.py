"""The verified registry: immutable versions, nothing unpickled before its digest (and signature) verify."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import orjson
import pytest

from schemas.errors import RegistryError, VerificationError, VersionNotFound
from services.model import Recommender
from services.model.interactions import Interactions
from services.registry import ARTIFACT, MANIFEST, LibraryMismatchWarning, Registry
from services.sandbox.world import World

METRICS = {"accuracy": 0.8, "precision": 0.3, "recall": 0.5, "f1": 0.375}


@pytest.fixture(scope="module")
def log() -> Interactions:
    return World.generate(2, n_users=120, n_items=60).interactions(1500, seed=1)


@pytest.fixture(scope="module")
def model(log: Interactions) -> Recommender:
    return Recommender().fit(log)


@pytest.fixture(params=["local", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "registry")
    return f"memory://registry-{uuid.uuid4().hex}"


def _register(registry: Registry, model: Recommender, log: Interactions, parent: str | None = None) -> str:
    return registry.register(model, metrics=METRICS, data_summary=log.summary(), parent=parent).version


class MarkerOnUnpickle:
    """Unpickling this runs code: it creates the directory named by ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def _write(registry: Registry, version: str, name: str, data: bytes) -> None:
    """Overwrite a stored file, as an attacker with write access to the store would."""
    path = f"{registry.root}/{version}/{name}"
    if registry.url.startswith("/"):
        Path(path).chmod(0o644)  # the registry leaves its files read-only
    registry.fs.pipe_file(path, data)


def _read(registry: Registry, version: str, name: str) -> bytes:
    data: bytes = registry.fs.cat_file(f"{registry.root}/{version}/{name}")
    return data


def _edit_manifest(registry: Registry, name: str, /, **changes: object) -> None:
    doc = orjson.loads(_read(registry, name, MANIFEST))
    doc.update(changes)
    _write(registry, name, MANIFEST, orjson.dumps(doc))


def test_register_then_load_scores_identically(url: str, model: Recommender, log: Interactions) -> None:
    registry = Registry(url)
    manifest = registry.register(
        model, metrics=METRICS, data_summary=log.summary(), baseline={"f1": 0.2}, parent=None
    )
    assert manifest.metrics == METRICS and manifest.baseline == {"f1": 0.2}
    assert manifest.data["rows"] == len(log)
    assert set(manifest.libraries) >= {"python", "numpy", "scipy", "scikit-learn", "joblib"}
    assert manifest.sha256 == hashlib.sha256(_read(registry, manifest.version, ARTIFACT)).hexdigest()
    assert manifest.signature is None
    loaded = registry.load(manifest.version)
    users, candidates, _ = log.requests()
    for a, b in zip(model.score_batch(users, candidates), loaded.score_batch(users, candidates), strict=True):
        assert np.array_equal(a, b)
    assert registry.manifest(manifest.version) == manifest
    assert registry.verify(manifest.version) == manifest


def test_versions_are_immutable_and_listed_oldest_first(
    url: str, model: Recommender, log: Interactions
) -> None:
    registry = Registry(url)
    first = _register(registry, model, log)
    second = _register(registry, model, log, parent=first)
    third = _register(registry, model, log, parent=second)
    assert len({first, second, third}) == 3  # the same model twice is still two versions
    listed = registry.versions()
    assert [m.version for m in listed] == [first, second, third]
    assert [m.parent for m in listed] == [None, first, second]
    assert registry.latest() is not None and registry.latest().version == third  # type: ignore[union-attr]
    if url.startswith("/"):
        for name in (ARTIFACT, MANIFEST):
            assert Path(url, first, name).stat().st_mode & 0o777 == 0o444


def test_a_version_saved_in_one_process_scores_identically_in_another(
    tmp_path: Path, model: Recommender, log: Interactions
) -> None:
    registry = Registry(str(tmp_path / "registry"))
    version = _register(registry, model, log)
    users, candidates, _ = log.requests()
    users, candidates = users[:50], candidates[:50]
    (tmp_path / "batch.json").write_text(json.dumps({"users": users, "candidates": candidates}))
    script = (
        "import json, sys\n"
        "from services.registry import Registry\n"
        "batch = json.load(open(sys.argv[3]))\n"
        "model = Registry(sys.argv[1]).load(sys.argv[2])\n"
        "scores = model.score_batch(batch['users'], batch['candidates'])\n"
        "picks = model.select(scores, [5] * len(scores))\n"
        "print(json.dumps({'scores': [s.tolist() for s in scores], 'picks': [p.tolist() for p in picks]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, registry.url, version, str(tmp_path / "batch.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(out.stdout)
    ours = model.score_batch(users, candidates)
    assert [s.tolist() for s in ours] == theirs["scores"]  # exact floats: json round-trips repr
    assert [p.tolist() for p in model.select(ours, [5] * len(ours))] == theirs["picks"]


def test_one_changed_byte_in_the_artifact_is_refused(url: str, model: Recommender, log: Interactions) -> None:
    registry = Registry(url)
    version = _register(registry, model, log)
    artifact = bytearray(_read(registry, version, ARTIFACT))
    artifact[len(artifact) // 2] ^= 0x01
    _write(registry, version, ARTIFACT, bytes(artifact))
    with pytest.raises(VerificationError, match=rf"version {version}: artifact sha256 .* does not match"):
        registry.load(version)
    with pytest.raises(VerificationError):
        registry.verify(version)
    assert registry.versions()[0].version == version  # its manifest is fine; loading is what fails


def test_no_code_in_a_tampered_artifact_runs(tmp_path: Path, model: Recommender, log: Interactions) -> None:
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(MarkerOnUnpickle(str(marker)))
    # Control: unpickling these bytes does run code, so the assertions below can fail.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(MarkerOnUnpickle(str(control))))
    assert control.exists()

    registry = Registry(str(tmp_path / "registry"))
    version = _register(registry, model, log)
    _write(registry, version, ARTIFACT, evil)
    with pytest.raises(VerificationError, match=r"does not match|bytes, the manifest says"):
        registry.load(version)
    # Same size as the manifest says, so the digest comparison is what refuses it.
    padded = evil + b"\x00" * (registry.manifest(version).size - len(evil))
    _write(registry, version, ARTIFACT, padded)
    with pytest.raises(VerificationError, match=r"sha256 .* does not match"):
        registry.load(version)
    assert not marker.exists()


def test_a_manifest_rewritten_to_match_evil_bytes_is_refused_with_a_key(
    tmp_path: Path, model: Recommender, log: Interactions
) -> None:
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(MarkerOnUnpickle(str(marker)))
    registry = Registry(str(tmp_path / "registry"), signing_key="secret")
    version = _register(registry, model, log)
    assert registry.manifest(version).signature
    _write(registry, version, ARTIFACT, evil)
    _edit_manifest(registry, version, sha256=hashlib.sha256(evil).hexdigest(), size=len(evil))
    with pytest.raises(VerificationError, match=rf"version {version}: manifest signature does not match"):
        registry.load(version)
    with pytest.raises(VerificationError):
        registry.verify(version)
    assert not marker.exists()
    assert registry.versions() == []
    assert registry.scan()[1] == [
        (
            version,
            f"version {version}: manifest signature does not match "
            "(the manifest was altered, or signed with another key)",
        )
    ]


def test_tampered_manifests_are_refused_without_a_key_too(
    url: str, model: Recommender, log: Interactions
) -> None:
    registry = Registry(url)
    version = _register(registry, model, log)
    original = _read(registry, version, MANIFEST)
    _edit_manifest(registry, version, sha256="0" * 64)
    with pytest.raises(VerificationError, match="does not match"):
        registry.load(version)
    _write(registry, version, MANIFEST, b"{not json")
    with pytest.raises(VerificationError, match="not valid JSON"):
        registry.load(version)
    _write(registry, version, MANIFEST, original)
    _edit_manifest(registry, version, version="20200101T000000-00000000")
    with pytest.raises(VerificationError, match="describes version 20200101T000000-00000000"):
        registry.load(version)
    _write(registry, version, MANIFEST, original)
    _edit_manifest(registry, version, size="big")
    with pytest.raises(VerificationError, match="malformed: size"):
        registry.manifest(version)


def test_with_a_key_unsigned_and_wrongly_signed_versions_are_refused(
    url: str, model: Recommender, log: Interactions
) -> None:
    unsigned = _register(Registry(url), model, log)
    signed = _register(Registry(url, signing_key="k1"), model, log)
    with pytest.raises(VerificationError, match=rf"version {unsigned}: manifest is not signed"):
        Registry(url, signing_key="k1").load(unsigned)
    with pytest.raises(VerificationError, match=rf"version {signed}: manifest signature does not match"):
        Registry(url, signing_key="k2").load(signed)
    assert isinstance(Registry(url, signing_key="k1").load(signed), Recommender)
    # Without a key the signature cannot be checked, but the digest still is.
    assert isinstance(Registry(url).load(signed), Recommender)
    registry = Registry(url, signing_key="k1")
    _edit_manifest(registry, signed, metrics={**METRICS, "f1": 0.99})
    with pytest.raises(VerificationError, match="signature does not match"):
        registry.manifest(signed)


def test_other_library_versions_load_with_a_warning(url: str, model: Recommender, log: Interactions) -> None:
    registry = Registry(url)
    version = _register(registry, model, log)
    doc = orjson.loads(_read(registry, version, MANIFEST))
    _edit_manifest(registry, version, libraries={**doc["libraries"], "scikit-learn": "0.0.1"})
    with pytest.warns(
        LibraryMismatchWarning, match=rf"{version} was built with scikit-learn 0.0.1 \(running"
    ):
        loaded = registry.load(version)
    assert isinstance(loaded, Recommender)


def test_missing_and_malicious_version_names(url: str, model: Recommender, log: Interactions) -> None:
    registry = Registry(url)
    with pytest.raises(VersionNotFound, match="no version 20990101T000000-deadbeef"):
        registry.load("20990101T000000-deadbeef")
    with pytest.raises(VersionNotFound, match="not a valid version name"):
        registry.manifest("../../etc")
    version = _register(registry, model, log)
    registry.fs.rm(f"{registry.root}/{version}/{ARTIFACT}")
    with pytest.raises(VerificationError, match=r"artifact model\.joblib is missing"):
        registry.verify(version)


def test_verified_bytes_that_are_not_a_model_are_refused(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    version = registry.register({"not": "a model"}, metrics=METRICS, data_summary={}).version
    with pytest.raises(RegistryError, match="is a dict, not a model"):
        registry.load(version)


def test_memory_store_is_shared_by_registries_on_the_same_url(model: Recommender, log: Interactions) -> None:
    url = f"memory://shared-{uuid.uuid4().hex}"
    version = _register(Registry(url), model, log)
    assert [m.version for m in Registry(url).versions()] == [version]
    assert fsspec.filesystem("memory").exists(f"/{url.removeprefix('memory://')}/{version}/{MANIFEST}")


def test_each_model_keeps_its_own_versions(url: str, model: Recommender, log: Interactions) -> None:
    home, cart = Registry(url, model="home"), Registry(url, model="cart", flat=False)
    h, c = _register(home, model, log), _register(cart, model, log)
    assert [m.version for m in home.versions()] == [h]
    assert [m.version for m in cart.versions()] == [c]
    assert cart.model_root.endswith("/models/cart")
    assert fsspec.core.url_to_fs(url)[0].exists(f"{cart.model_root}/{c}/{MANIFEST}")
    with pytest.raises(VersionNotFound, match=f"no version {h} of model cart"):
        cart.load(h)  # a version of one model is never another's, whatever it is named
    assert isinstance(cart.load(c), Recommender)


def test_the_default_model_keeps_the_flat_layout_from_before_models(
    tmp_path: Path, model: Recommender
) -> None:
    """A registry written before models were named holds ``<root>/<version>/``: the default model's versions,
    read and still written there (replicas from before read them); another model sees none of them. A
    version under ``models/<name>/`` is the default model's too once that name is the default."""
    log = World.generate(2, n_users=120, n_items=60).interactions(1500, seed=1)
    url = str(tmp_path / "registry")
    default = Registry(url)  # the default model ("recommender"), flat=True
    old = _register(default, model, log)
    assert sorted(p.name for p in Path(url, old).iterdir()) == [MANIFEST, ARTIFACT]  # where it always was
    assert Registry(url, model="cart", flat=False).versions() == []
    with pytest.raises(VersionNotFound):
        Registry(url, model="cart", flat=False).load(old)
    named = _register(Registry(url, model="recommender", flat=False), model, log, parent=old)
    assert Path(url, "models", "recommender", named, MANIFEST).is_file()
    assert [m.version for m in default.versions()] == [old, named]
    assert isinstance(default.load(named), Recommender) and default.verify(old).version == old
