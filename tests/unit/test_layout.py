"""Imports flow one way: cli -> bench -> sandbox -> ops -> runtime -> schemas.

The runtime (what a deployment runs) never imports the tools built around it, so a replica or a monitor
never drags in the local broker launcher, the simulated world or the benchmark. Every import counts, the
ones inside functions too.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUNTIME = (
    "services.config",
    "services.kafka",
    "services.model",
    "services.registry",
    "services.deployment",
    "services.serving",
    "streams",
)
#: What each layer may import from modelwatch (besides ``schemas``, which everyone may import).
ALLOWED: dict[str, tuple[str, ...]] = {
    "schemas": ("schemas",),
    "runtime": RUNTIME,
    "services.ops": (*RUNTIME, "services.ops"),
    "services.sandbox": (*RUNTIME, "services.ops", "services.sandbox"),
    "services.bench": (*RUNTIME, "services.ops", "services.sandbox", "services.bench"),
    "services.cli": ("services", "streams"),
}


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def layer(module: str) -> str:
    if _within(module, RUNTIME):
        return "runtime"
    for name in ALLOWED:
        if _within(module, (name,)):
            return name
    return "services"  # the package's own __init__


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, source: str) -> list[tuple[int, str]]:
    """(line, module) of every modelwatch import in a file (``path`` relative to the root), relative ones
    resolved."""
    tree = ast.parse(source, filename=str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*here[: len(here) - node.level + 1], *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
    return [(line, m) for line, m in found if m.split(".")[0] in ("schemas", "services", "streams")]


def sources() -> dict[Path, str]:
    files = sorted(p for d in ("schemas", "services", "streams") for p in (ROOT / d).rglob("*.py"))
    return {p.relative_to(ROOT): p.read_text() for p in files}


def violations(files: dict[Path, str]) -> list[str]:
    out = []
    for path, source in files.items():
        own = layer(module_name(path))
        allowed = ALLOWED.get(own, ("schemas", "services", "streams"))
        for line, target in imported(path, source):
            # `from services import kafka` names a package through its parent: judge the package named.
            if target.split(".")[0] == "schemas" or _within(target, allowed):
                continue
            if target in ("services", "services.__init__"):
                continue
            out.append(f"{path}:{line}: {own} imports {target}")
    return out


def test_imports_flow_one_way() -> None:
    assert violations(sources()) == []


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("services/serving/bad.py", "from services.sandbox.world import World\n", "runtime imports"),
        ("streams/bad.py", "def f():\n    from services.bench import baseline\n", "runtime imports"),
        ("services/ops/bad.py", "from services.cli import main\n", "services.ops imports"),
        ("services/sandbox/bad.py", "from services.bench import run_bench\n", "services.sandbox imports"),
        ("schemas/bad.py", "from services import kafka\n", "schemas imports"),
    ],
)
def test_an_import_the_wrong_way_is_caught(where: str, source: str, expected: str) -> None:
    found = violations({Path(where): source})
    assert len(found) == 1 and expected in found[0], found


def test_relative_imports_are_resolved() -> None:
    found = violations({Path("services/serving/bad.py"): "from ..sandbox import world\n"})
    assert found == ["services/serving/bad.py:1: runtime imports services.sandbox.world"]


def test_runtime_imports_resolve_relative_imports() -> None:
    assert layer("services.serving.service") == "runtime"
    assert layer("services.sandbox.demo") == "services.sandbox"
    assert layer("streams.app") == "runtime"


@pytest.mark.parametrize(
    "written",
    [
        "modelwatch-demo/demo-report.png",  # make demo
        "modelwatch-bench.png",  # modelwatch bench
        "modelwatch-report.html",  # modelwatch report
        ".venv/bin/python",  # make install
    ],
)
def test_what_the_readmes_commands_write_is_ignored(written: str) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", written], cwd=ROOT, capture_output=True, check=False
    )
    assert check.returncode == 0, f"{written} would show as untracked: add it to .gitignore"
