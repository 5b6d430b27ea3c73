"""The model registry: immutable, verified versions on a local directory or any fsspec URL.

Layout under the registry root (``MODELWATCH_REGISTRY``): the default model's versions (``model_name``)
where they always were, every other model's in a directory of its own::

    <root>/<version>/model.joblib                    the fitted model, as joblib wrote it
    <root>/<version>/manifest.json                   its Manifest (written last: a version exists once it
                                                     has one)
    <root>/models/<model>/<version>/...              the same, for each other model (``--model``)

So a registry written before models were named is the default model's as it stands, and replicas from
before then still read what is registered for it now. The default model also reads a version found under
``models/<its name>/`` (registered under that name before it became the default).

A version name is ``<UTC time>-<8 hex>``, e.g. ``20261124T034100-3f2a9c1b``; the hex comes from the
artifact's digest, the creation time and a random salt, so two identical models never share a version.

joblib is pickle, and unpickling runs code, so :meth:`Registry.load` checks the manifest first (with a
keyring, its Ed25519 signature by a publisher key; with the legacy signing key, its HMAC), then reads the
artifact's bytes and checks their sha256 against the manifest, and only then unpickles them, from memory.
A registry given a publisher's private key (``keys.publisher_key``) signs the versions it registers.
A model built with other library versions loads with a :class:`LibraryMismatchWarning`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from os import PathLike
from typing import Any

import fsspec
import joblib
from fsspec.implementations.local import LocalFileSystem

from schemas.errors import RegistryError, VerificationError, VersionNotFound
from services.config import Settings
from services.model.protocol import Model, class_name
from services.model.user_code import use_model_path
from services.registry.keys import Keyring, Signer, keyring_of, signer_of
from services.registry.manifest import VERSION_PATTERN, Manifest, library_mismatches, running_libraries

ARTIFACT = "model.joblib"
MANIFEST = "manifest.json"


class LibraryMismatchWarning(UserWarning):
    """A version was built with other library versions than the running ones; its scores may differ."""


class Registry:
    """Versions of the recommender, stored under ``url`` (a directory or an fsspec URL)."""

    def __init__(
        self,
        url: str,
        signing_key: str | None = None,
        model_path: Sequence[str | PathLike[str]] = (),
        *,
        keyring: Keyring | None = None,
        publisher: Signer | None = None,
        model: str = "recommender",
        flat: bool = True,
    ) -> None:
        self.url = url
        #: The model whose versions these are; ``flat``: it is the default model, whose versions are
        #: written flat under the root, as before models were named.
        self.model, self.flat = model, flat
        self.signing_key = signing_key or None
        #: Directories put first on ``sys.path`` before unpickling (the ``model_path`` setting).
        self.model_path = list(model_path)
        self.keyring = keyring  # manifests must carry a publisher's signature when set
        self.publisher = publisher  # signs what register() writes
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/") or "/"

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        key = settings.signing_key.get_secret_value() if settings.signing_key else None
        return cls(
            settings.registry,
            key,
            settings.model_path,
            keyring=keyring_of(settings),
            publisher=signer_of(settings, "publisher"),
            model=settings.model_name,
            flat=settings.model_name == settings.default_model,
        )

    def __repr__(self) -> str:
        return (
            f"Registry({self.url!r}, model={self.model!r}, signed={self.signing_key is not None}, "
            f"keyring={self.keyring})"
        )

    # ------------------------------------------------------------------ paths
    @property
    def model_root(self) -> str:
        """Where this model's versions are written: the root for the default model, else
        ``<root>/models/<model>``."""
        return self.root if self.flat else self._named_root

    @property
    def _named_root(self) -> str:
        return f"{self.root.rstrip('/')}/models/{self.model}"

    def _roots(self) -> list[str]:
        """Where this model's versions are read, where they are written first."""
        return [self.root, self._named_root] if self.flat else [self._named_root]

    def _dir(self, version: str) -> str:
        """The directory of ``version``: where its manifest is, else where it would be written."""
        if not VERSION_PATTERN.fullmatch(version):
            raise VersionNotFound(f"{version!r} is not a valid version name")
        written = f"{self.model_root.rstrip('/')}/{version}"
        if self.flat and not self.fs.exists(f"{written}/{MANIFEST}"):
            named = f"{self._named_root}/{version}"
            if self.fs.exists(f"{named}/{MANIFEST}"):
                return named
        return written

    def _path(self, version: str, name: str) -> str:
        return f"{self._dir(version)}/{name}"

    # ------------------------------------------------------------------ writing
    def register(
        self,
        model: Any,
        *,
        metrics: dict[str, float | None],
        data_summary: dict[str, Any],
        parent: str | None = None,
        baseline: dict[str, float | None] | None = None,
    ) -> Manifest:
        """Store ``model`` as a new immutable version and return its manifest."""
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        artifact = buffer.getvalue()
        digest = hashlib.sha256(artifact).hexdigest()
        now = datetime.now(UTC)
        salt = secrets.token_hex(8)
        tag = hashlib.sha256(f"{digest}{now.isoformat()}{salt}".encode()).hexdigest()[:8]
        version = f"{now:%Y%m%dT%H%M%S}-{tag}"
        describe = getattr(model, "describe", None)
        manifest = Manifest(
            version=version,
            created=now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            sha256=digest,
            size=len(artifact),
            metrics=dict(metrics),
            data=dict(data_summary),
            parent=parent,
            libraries=running_libraries(),
            model=describe() if callable(describe) else {"class": class_name(model)},
            baseline=dict(baseline or {}),
        )
        if self.publisher is not None:
            manifest = manifest.published_by(self.publisher)
        if self.signing_key:
            manifest = manifest.signed(self.signing_key)
        directory = self._dir(version)
        if self.fs.exists(self._path(version, MANIFEST)):
            raise RegistryError(f"version {version} already exists; versions are immutable")
        try:
            self.fs.makedirs(directory, exist_ok=True)
            self.fs.pipe_file(self._path(version, ARTIFACT), artifact)
            # The manifest goes last, under a temporary name then moved, so a reader never sees a
            # version whose manifest is half written or whose artifact is missing.
            staging = self._path(version, f".{MANIFEST}.{salt}")
            self.fs.pipe_file(staging, manifest.to_json())
            self.fs.mv(staging, self._path(version, MANIFEST))
        except OSError as exc:
            raise RegistryError(f"cannot write version {version} to {self.url}: {exc}") from exc
        if isinstance(self.fs, LocalFileSystem):
            # Read-only files: an accidental overwrite fails instead of silently changing a version.
            for name in (ARTIFACT, MANIFEST):
                self.fs.chmod(self._path(version, name), 0o444)
        return manifest

    # ------------------------------------------------------------------ reading
    def _names(self) -> list[str]:
        names: set[str] = set()
        for root in self._roots():
            if not self.fs.exists(root):
                continue
            for entry in self.fs.ls(root, detail=True):
                name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
                if entry.get("type") == "directory" and VERSION_PATTERN.fullmatch(name):
                    names.add(name)
        return sorted(names)

    def scan(self) -> tuple[list[Manifest], list[tuple[str, str]]]:
        """(manifests that verify, oldest first; (version, reason) for those that do not)."""
        good: list[Manifest] = []
        bad: list[tuple[str, str]] = []
        for name in self._names():
            if not self.fs.exists(self._path(name, MANIFEST)):
                continue  # being written, or abandoned before its manifest: not a version
            try:
                good.append(self.manifest(name))
            except VerificationError as exc:
                bad.append((name, str(exc)))
        good.sort(key=lambda m: (m.created, m.version))
        return good, sorted(bad)

    def versions(self) -> list[Manifest]:
        """Every version whose manifest verifies, oldest first."""
        return self.scan()[0]

    def latest(self) -> Manifest | None:
        found = self.versions()
        return found[-1] if found else None

    def manifest(self, version: str) -> Manifest:
        """The manifest of ``version``, its signatures verified (a publisher's with a keyring, the HMAC with a
        signing key); the artifact is not read."""
        path = self._path(version, MANIFEST)
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise VersionNotFound(
                f"no version {version} of model {self.model} in registry {self.url}"
            ) from exc
        manifest = Manifest.from_json(raw, version)
        if self.keyring is not None:
            manifest.check_publisher(self.keyring)
        if self.signing_key:
            manifest.check_signature(self.signing_key)
        return manifest

    def _verified_artifact(self, version: str) -> tuple[Manifest, bytes]:
        manifest = self.manifest(version)
        try:
            artifact = self.fs.cat_file(self._path(version, ARTIFACT))
        except FileNotFoundError as exc:
            raise VerificationError(f"version {version}: artifact {ARTIFACT} is missing") from exc
        if len(artifact) != manifest.size:
            raise VerificationError(
                f"version {version}: artifact is {len(artifact)} bytes, the manifest says {manifest.size}; "
                "not loaded"
            )
        actual = hashlib.sha256(artifact).hexdigest()
        if not hmac.compare_digest(actual, manifest.sha256):
            raise VerificationError(
                f"version {version}: artifact sha256 {actual[:16]}… does not match the manifest's "
                f"{manifest.sha256[:16]}…; not loaded"
            )
        return manifest, artifact

    def verify(self, version: str) -> Manifest:
        """Check the manifest (and its signature with a key) and the artifact's digest; unpickle nothing."""
        return self._verified_artifact(version)[0]

    def load(self, version: str) -> Model:
        """The model of ``version``, unpickled only after its digest (and signature) verified.

        Unpickling imports the model's class: a class whose module cannot be imported here (a user's model
        outside ``model_path`` and the environment) is a :class:`RegistryError` naming the module."""
        manifest, artifact = self._verified_artifact(version)
        mismatches = library_mismatches(manifest.libraries)
        if mismatches:
            warnings.warn(
                f"version {version} was built with {', '.join(mismatches)}; its scores may differ",
                LibraryMismatchWarning,
                stacklevel=2,
            )
        use_model_path(self.model_path)  # only now: the artifact verified
        try:
            model = joblib.load(io.BytesIO(artifact))
        except ModuleNotFoundError as exc:  # the user's code is not installed, nor on model_path
            raise RegistryError(
                f"version {version}: verified, but its model's module {exc.name!r} cannot be imported "
                f"here ({manifest.model.get('class', 'class unknown')}); install it or add its directory "
                "to model_path"
            ) from exc
        except Exception as exc:  # a verified artifact that still fails: a library or code change
            raise RegistryError(f"version {version}: verified, but cannot be unpickled: {exc}") from exc
        if not callable(getattr(model, "score_batch", None)):
            raise RegistryError(
                f"version {version}: the artifact is a {type(model).__name__}, not a model (no score_batch)"
            )
        loaded: Model = model
        return loaded
