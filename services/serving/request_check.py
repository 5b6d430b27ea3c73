"""The fast request check, compiled from the contract: ``schemas/prediction-request.schema.json`` becomes
msgspec types when this module is imported, so what the fast path enforces cannot drift from the schema.

:func:`compile_check` turns each property of the schema into a msgspec type (``string``, ``integer``,
``boolean``, arrays of them and free-form objects, with their length and range bounds), required or
optional as the schema says, into one :class:`msgspec.Struct` that parses and checks a request in one pass
in C. What msgspec types cannot say is checked after decoding: unique array items, integers orjson would
read as floats, a free-form object's values (read again by orjson, under the codec's JSON rules). A keyword
it does not know raises :class:`Uncompilable`: a replica then checks every request with the codec alone,
correct and slower, and says why at start. A new optional field of those types (such as a ``model``
string) is picked up from the schema with no change here; a new keyword is one line in the tables below.

The compiler is itself checked: :meth:`FastCheck.differences` compares the JSON Schema msgspec generates
from the compiled types (plus the checks made after decoding) with the contract, and a replica whose
compiled check does not reproduce its contract turns the fast path off too; a unit test requires the shipped
schema to compile and to agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType
from msgspec.structs import asdict

#: Past this, orjson (the codec's parser, and the prediction's encoder) reads an integer as a float or
#: cannot write it; msgspec would hand over a Python int. The fast path leaves such a value to the codec.
_LARGEST_FAST_INT = 2**63 - 1
_SMALLEST_FAST_INT = -(2**63)

#: Keywords that document and do not constrain.
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "examples", "$comment", "default"})

#: Per JSON type: the msgspec type, and the schema's bound keywords as ``msgspec.Meta`` arguments.
_SCALARS: dict[str, tuple[type, dict[str, str]]] = {
    "string": (str, {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}),
    "integer": (
        int,
        {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"},
    ),
    "boolean": (bool, {}),
}
_ARRAY_BOUNDS = {"minItems": "min_length", "maxItems": "max_length"}
_OBJECT_BOUNDS = {"minProperties": "min_length", "maxProperties": "max_length"}


class Uncompilable(Exception):
    """The contract says something the fast path cannot check exactly (it then stays off)."""


@dataclass
class FastCheck:
    """A contract compiled into msgspec types, and what is checked after decoding."""

    struct: type[msgspec.Struct]
    optional: tuple[str, ...] = ()  # fields the contract does not require
    unique: tuple[str, ...] = ()  # array fields whose items must be unique
    wide_ints: tuple[str, ...] = ()  # integer fields whose bounds allow values past 64 bits
    free_form: tuple[str, ...] = ()  # object fields of any content: the request is read by orjson
    #: String fields with a pattern: Python's ``$`` (msgspec's) also matches before a final newline, the
    #: schema's (ECMA-262) does not, so a value ending in one is left to the codec.
    patterned: tuple[str, ...] = ()
    #: The check itself: the request in a message value if the fast path can vouch for it (then the codec
    #: would accept it too, as the same dict); ``None`` means ask the codec. A closure: it runs per request.
    check: Callable[[bytes], dict[str, Any] | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.check = _checker(
            msgspec.json.Decoder(self.struct).decode,
            self.optional,
            self.unique,
            self.wide_ints,
            self.free_form,
            self.patterned,
        )

    def enforced_schema(self) -> dict[str, Any]:
        """The JSON Schema this check enforces: msgspec's, from the compiled types, with the checks made
        after decoding merged in."""
        generated = msgspec.json.schema(self.struct)
        name = generated["$ref"].rsplit("/", 1)[1]
        schema: dict[str, Any] = generated["$defs"][name]
        for unique in self.unique:
            schema["properties"][unique]["uniqueItems"] = True
        # Unknown fields are refused by the struct and left to the codec, which accepts them.
        schema["additionalProperties"] = True
        constraints: dict[str, Any] = constraints_of(schema)
        return constraints

    def differences(self, contract: dict[str, Any]) -> list[str]:
        """How this check differs from ``contract``, one line per difference; empty when they agree."""
        out: list[str] = []

        def compare(want: Any, got: Any, where: str) -> None:
            if isinstance(want, dict) and isinstance(got, dict):
                for key in sorted(set(want) | set(got)):
                    here = f"{where}/{key}"
                    if key not in got:
                        out.append(f"{here}: the contract says {want[key]!r}, the fast path nothing")
                    elif key not in want:
                        out.append(f"{here}: the fast path says {got[key]!r}, the contract nothing")
                    else:
                        compare(want[key], got[key], here)
            elif want != got or type(want) is not type(got):
                out.append(f"{where}: the contract says {want!r}, the fast path {got!r}")

        compare(constraints_of(contract), self.enforced_schema(), "")
        return out


def _checker(
    decode: Callable[[bytes], Any],
    optional: tuple[str, ...],
    unique: tuple[str, ...],
    wide_ints: tuple[str, ...],
    free_form: tuple[str, ...],
    patterned: tuple[str, ...] = (),
) -> Callable[[bytes], dict[str, Any] | None]:
    def check(value: bytes) -> dict[str, Any] | None:
        try:
            checked = decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            # msgspec raises RecursionError past its nesting depth (hostile JSON, e.g. 10,000 "[" in a
            # context): the codec then rejects it with a reason, and the replica lives.
            return None
        request: dict[str, Any] = asdict(checked)
        for name in optional:
            if request[name] is UNSET:
                del request[name]
        for name in unique:
            items = request.get(name)
            if items is not None and len(set(items)) != len(items):
                return None
        for name in patterned:
            text = request.get(name)
            if text is not None and text.endswith("\n"):
                return None
        for name in wide_ints:
            number = request.get(name)
            if number is not None and not _SMALLEST_FAST_INT <= number <= _LARGEST_FAST_INT:
                return None
        for name in free_form:
            if name in request:
                # Free-form values are read by orjson, under the codec's JSON rules (1e999, big integers).
                try:
                    parsed: dict[str, Any] = orjson.loads(value)
                except orjson.JSONDecodeError:
                    return None
                return parsed
        return request

    return check


def constraints_of(schema: Any) -> Any:
    """``schema`` without its annotations, ``required`` as a sorted list: what a validator enforces."""
    if isinstance(schema, dict):
        out = {k: constraints_of(v) for k, v in schema.items() if k not in ANNOTATIONS}
        if isinstance(out.get("required"), list):
            out["required"] = sorted(out["required"])
        return out
    if isinstance(schema, list):
        return [constraints_of(v) for v in schema]
    return schema


def compile_check(contract: dict[str, Any]) -> FastCheck:
    """``contract`` (an object schema) as a :class:`FastCheck`; :class:`Uncompilable` names what it cannot
    check exactly."""
    _only(contract, {"type", "required", "properties", "additionalProperties"}, "")
    if contract.get("type") != "object" or contract.get("additionalProperties", True) is not True:
        raise Uncompilable("the request must be an object that accepts unknown fields")
    required = set(contract.get("required", []))
    properties: dict[str, Any] = contract.get("properties", {})
    if not required <= set(properties):
        raise Uncompilable(f"required fields without a type: {sorted(required - set(properties))}")
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    unique, wide_ints, free_form, patterned = [], [], [], []
    for name, prop in properties.items():
        kind = _compiled_type(prop, name)
        if prop.get("type") == "string" and "pattern" in prop:
            patterned.append(name)
        if prop.get("type") == "array" and prop.get("uniqueItems") is True:
            unique.append(name)
        if prop.get("type") == "integer" and _wide(prop):
            wide_ints.append(name)
        if prop.get("type") == "object":
            free_form.append(name)
        fields.append((name, kind) if name in required else (name, kind | UnsetType, UNSET))
    # Unknown fields are refused rather than skipped: msgspec skips their content without the codec's JSON
    # rules (it would let invalid UTF-8 or 1e999 through), so a request carrying them is left to the codec.
    struct = msgspec.defstruct("PredictionRequest", fields, kw_only=True, forbid_unknown_fields=True)
    optional = tuple(name for name in properties if name not in required)
    return FastCheck(struct, optional, tuple(unique), tuple(wide_ints), tuple(free_form), tuple(patterned))


def _compiled_type(prop: Any, where: str, top: bool = True) -> Any:
    if not isinstance(prop, dict):
        raise Uncompilable(f"{where}: not a schema")
    kind = prop.get("type")
    if kind in _SCALARS:
        base, bounds = _SCALARS[kind]
        _only(prop, {"type", *bounds}, where)
        return _bounded(base, prop, bounds)
    if kind == "array" and "items" in prop:
        _only(prop, {"type", "items", *_ARRAY_BOUNDS, *(["uniqueItems"] if top else [])}, where)
        inner = _compiled_type(prop["items"], f"{where}[]", top=False)
        return _bounded(list[inner], prop, _ARRAY_BOUNDS)  # type: ignore[valid-type]
    if kind == "object" and top:
        _only(prop, {"type", *_OBJECT_BOUNDS}, where)  # free-form: no properties of its own
        return _bounded(dict[str, Any], prop, _OBJECT_BOUNDS)
    raise Uncompilable(f"{where}: type {kind!r} is not compiled")


def _bounded(base: Any, prop: dict[str, Any], bounds: dict[str, str]) -> Any:
    meta = {bounds[k]: v for k, v in prop.items() if k in bounds}
    return Annotated[base, Meta(**meta)] if meta else base


def _wide(prop: dict[str, Any]) -> bool:
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    return low is None or low < _SMALLEST_FAST_INT or high is None or high > _LARGEST_FAST_INT


def _only(schema: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(schema) - allowed - ANNOTATIONS
    if unknown:
        raise Uncompilable(f"{where or '<request>'}: {', '.join(sorted(unknown))} not compiled")


def check_for(contract: dict[str, Any]) -> tuple[FastCheck | None, list[str]]:
    """The compiled check for ``contract``, or ``None`` and why it cannot be used."""
    try:
        check = compile_check(contract)
    except Uncompilable as exc:
        return None, [str(exc)]
    differences = check.differences(contract)
    return (None, differences) if differences else (check, [])
