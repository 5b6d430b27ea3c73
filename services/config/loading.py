"""Reading the settings: once per process, and a validation failure turned into one :class:`ConfigError`
line that names the key and where it came from (the file, a variable, or the code's arguments)."""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.errors import ConfigError
from services.config.toplevel import Settings, config_file


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _source(loc: tuple[int | str, ...], path: Path | None) -> str:
    """Where the setting at ``loc`` came from: the file, a variable, or the code's arguments."""
    if path is not None:
        try:
            node: Any = tomllib.loads(path.read_text())
            for part in loc:
                node = node[part]
            return f"in {path}"
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
    variable = "MODELWATCH_" + "__".join(str(p) for p in loc).upper()
    if any(name.upper() == variable for name in os.environ):
        return f"in the environment ({variable})"
    return "given in code"


def _explain(exc: ValidationError, path: Path | None) -> str:
    """One line for a validation failure: every unknown key with where it came from, else the first error."""
    errors = exc.errors()
    unknown: dict[str, list[str]] = {}  # where -> the unknown keys found there
    for e in errors:
        if e["type"] == "extra_forbidden":
            unknown.setdefault(_source(tuple(e["loc"]), path), []).append(repr(_dotted(tuple(e["loc"]))))
    if unknown:
        keys = sum(len(names) for names in unknown.values())
        named = "; ".join(f"{', '.join(names)} {where}" for where, names in unknown.items())
        # The hint names the package that defines every key; README.md and
        # tests/integration/test_settings_at_start.py quote it.
        return f"unknown setting{'s' if keys > 1 else ''} {named} (a typo? see services/config/)"
    first = errors[0]
    loc, why = tuple(first["loc"]), first["msg"].removeprefix("Value error, ")
    if not loc:
        return f"invalid settings{f' in {path}' if path else ''}: {why}"
    return f"invalid setting {_dotted(loc)} {_source(loc, path)}: {why}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation failure into one readable :class:`ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file())) from exc
    except ValueError as exc:  # a malformed TOML file
        raise ConfigError(f"cannot read configuration: {exc}") from exc


@cache
def settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
