"""The verified model registry: immutable versions, each a joblib artifact and a JSON manifest."""

from services.registry.manifest import Manifest, running_libraries
from services.registry.store import ARTIFACT, MANIFEST, LibraryMismatchWarning, Registry

__all__ = ["ARTIFACT", "MANIFEST", "LibraryMismatchWarning", "Manifest", "Registry", "running_libraries"]
