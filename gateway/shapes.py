"""Payloads of `table` and `state` routes to one row, as their declared columns say, or a reject.

A route's decoder is built once: each column's JSON pointer (RFC 6901) is parsed then, its
default converted then, so that a bad pointer or default is a configuration error at start,
not a reject per message. Per message there is one msgspec decode (JSON or MessagePack, into
plain Python values) and one precompiled function per column that finds, checks and converts
its value. The limits and reasons are telemetry's (`gateway.decoder`), plus:

- `missing_field`: a required column's pointer does not resolve, or finds null; a pointer
  that passes through something other than an object or array (or an index past the end,
  or `-`) does not resolve.
- `wrong_type`: a value that is not the column's type (a float for an integer column, an
  integer out of the column's range, a boolean anywhere but a bool column, text that is no
  UUID or timestamp); MessagePack bin and extension values, and map keys that are not text,
  which JSON cannot hold. The MessagePack timestamp extension is a timestamp: timestamptz
  columns take it, and in JSON (jsonb, telemetry) it is RFC 3339 text.
- `malformed_msgpack`: not MessagePack, what `malformed_json` is for JSON.

A MessagePack telemetry message is re-encoded as the JSON the telemetry decoder takes
(`msgpack_as_json`), so both formats share its one hot path.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from gateway import pgtime
from gateway.config import ColumnConfig, RouteConfig
from gateway.contracts import Decode, Row
from gateway.decoder import DecodeLimits, Reject, has_nul_escape, undecodable
from gateway.validation import ConfigError

__all__ = ["msgpack_as_json", "shape_decoder"]

_MISSING: Any = object()  # a pointer that does not resolve; JSON null is treated alike
_CONTAINERS = (dict, list)
# MessagePack bytes that may open a map or an array: every container has one, so fewer of
# them than the depth limit cannot nest too deep (one C pass instead of a walk).
_NOT_MSGPACK_CONTAINERS = bytes(set(range(256)) - set(range(0x80, 0xA0)) - {0xDC, 0xDD, 0xDE, 0xDF})
_RANGES = {"int8": (-(2**63), 2**63 - 1), "int4": (-(2**31), 2**31 - 1)}
_OUT_OF_RANGE = ("Number out of range", "Integer value out of range")
_SPECIAL = ("$identity", "$stream", "$received_at")

_json = msgspec.json.Decoder().decode
_msgpack = msgspec.msgpack.Decoder().decode
_to_json = msgspec.json.encode

Parse = Callable[[bytes, int], Any]
Convert = Callable[[Any, str], Any]
Column = Callable[[Any, str, str, int], Any]


def shape_decoder(route: RouteConfig, limits: DecodeLimits) -> Decode:
    """The route's decoder: (payload, identity, stream, received_at) -> [one row], in the
    order of `route.columns`, or `Reject`. Raises `ConfigError` naming `columns[j].path`,
    `.type` or `.default` when a column can never be filled."""
    if route.kind == "telemetry":
        raise ConfigError("route", [("kind", "telemetry routes take the telemetry decoder")])
    parse = _parse_json if route.format == "json" else _parse_msgpack
    columns = [
        _column(index, column, route.format, limits) for index, column in enumerate(route.columns)
    ]
    max_bytes, max_depth = limits.max_payload_bytes, limits.max_depth

    def decode(payload: bytes, identity: str, stream: str, received_at: int) -> list[Row]:
        if len(payload) > max_bytes:
            raise Reject("payload_too_large", f"{len(payload)} bytes, limit {max_bytes}")
        document = parse(payload, max_depth)
        return [tuple([column(document, identity, stream, received_at) for column in columns])]

    return decode


def msgpack_as_json(payload: bytes, limits: DecodeLimits) -> bytes:
    """A MessagePack telemetry message as the JSON `gateway.decoder.decode` takes, or `Reject`
    with telemetry's reasons (bin, extension values and keys that are not text:
    `invalid_reading`); its size is that of the MessagePack bytes."""
    if len(payload) > limits.max_payload_bytes:
        raise Reject("payload_too_large", f"{len(payload)} bytes, limit {limits.max_payload_bytes}")
    document = _parse_msgpack(payload, limits.max_depth)
    _check_json_form(document, "message", "invalid_reading")
    return _to_json(document)


def _parse_json(payload: bytes, max_depth: int) -> Any:
    try:
        document = _json(payload)
    except RecursionError:
        raise Reject("too_deeply_nested", "nesting deeper than the parser allows") from None
    except msgspec.ValidationError as exc:
        raise _parse_refused(exc, "malformed_json") from None
    except msgspec.DecodeError as exc:
        raise undecodable(payload, exc) from None
    if payload.count(b"{") + payload.count(b"[") > max_depth:
        _check_depth(document, max_depth)
    return document


def _parse_msgpack(payload: bytes, max_depth: int) -> Any:
    try:
        document = _msgpack(payload)
    except RecursionError:
        raise Reject("too_deeply_nested", "nesting deeper than the parser allows") from None
    except msgspec.ValidationError as exc:  # e.g. a timestamp extension of the wrong length
        raise _parse_refused(exc, "malformed_msgpack") from None
    except msgspec.DecodeError as exc:
        reason = "invalid_text" if "UTF-8" in str(exc) else "malformed_msgpack"
        raise Reject(reason, str(exc)) from None
    if len(payload.translate(None, _NOT_MSGPACK_CONTAINERS)) > max_depth:
        _check_depth(document, max_depth)
    return document


def _parse_refused(exc: msgspec.ValidationError, otherwise: str) -> Reject:
    text = str(exc)
    return Reject("non_finite_value" if text.startswith(_OUT_OF_RANGE) else otherwise, text)


def _check_depth(document: Any, limit: int) -> None:
    """Refuse containers nested deeper than `limit`, level by level, without recursion."""
    level = [document] if type(document) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > limit:
            raise Reject("too_deeply_nested", f"nested deeper than {limit} levels")
        inner: list[Any] = []
        for container in level:
            values = container.values() if type(container) is dict else container
            inner.extend(value for value in values if type(value) in _CONTAINERS)
        level, depth = inner, depth + 1


def _column(index: int, column: ColumnConfig, fmt: str, limits: DecodeLimits) -> Column:
    """One column's function: (document, identity, stream, received_at) -> its value."""
    where = f"columns[{index}]"
    path, kind = column.path, column.type
    if path == "$received_at":
        if kind != "timestamptz":
            raise ConfigError("route", [(f"{where}.type", "$received_at is a timestamptz")])
        return _received_at
    if path in _SPECIAL:
        if kind not in ("text", "uuid"):
            raise ConfigError("route", [(f"{where}.type", f"{path} is text: text or uuid")])
        convert = _CONVERTERS[kind]
        if path == "$identity":
            return lambda document, identity, stream, received_at: convert(identity, path)
        return lambda document, identity, stream, received_at: convert(stream, path)
    label = path or "(whole payload)"
    try:
        tokens = _pointer(path)
    except ValueError as exc:
        raise ConfigError("route", [(f"{where}.path", str(exc))]) from None
    get = _getter(tokens, label)
    # Members by name are followed inline (no call): a miss, or a token that may be an array
    # index, takes `get`, which also checks the keys of the map where the miss was.
    keys = tuple(key for key, index in tokens) if all(i is None for _, i in tokens) else None
    convert = _jsonb_converter(fmt) if kind == "jsonb" else _CONVERTERS[kind]
    fallback = _default(column, convert, f"{where}.default")
    required, missing = column.required, f"{label}: required {kind}"
    if kind == "timestamptz":
        max_age, max_ahead = limits.max_age_us, limits.max_ahead_us

        def stamp(document: Any, identity: str, stream: str, received_at: int) -> Any:
            found = document
            for key in keys or ():
                found = found.get(key, _MISSING) if type(found) is dict else _MISSING
            if keys is None or found is _MISSING:
                found = get(document)
            if found is None or found is _MISSING:
                if required:
                    raise Reject("missing_field", missing)
                return fallback
            ts: int = convert(found, label)
            if not received_at - max_age <= ts <= received_at + max_ahead:
                raise _out_of_window(label, ts, received_at - max_age, received_at + max_ahead)
            return ts

        return stamp

    def value(document: Any, identity: str, stream: str, received_at: int) -> Any:
        found = document
        for key in keys or ():
            found = found.get(key, _MISSING) if type(found) is dict else _MISSING
        if keys is None or found is _MISSING:
            found = get(document)
        if found is None or found is _MISSING:
            if required:
                raise Reject("missing_field", missing)
            return fallback
        return convert(found, label)

    return value


def _received_at(document: Any, identity: str, stream: str, received_at: int) -> int:
    return received_at


def _default(column: ColumnConfig, convert: Convert, where: str) -> Any:
    """The default converted now, so a default that is not the column's type stops the start."""
    if column.default is None:
        return None
    try:
        return convert(column.default, where)
    except Reject as exc:
        raise ConfigError("route", [(where, f"not a {column.type}: {exc.detail}")]) from None


def _pointer(path: str) -> tuple[tuple[str, int | None], ...]:
    """RFC 6901 reference tokens, each with its array index when it is one."""
    if path == "":
        return ()
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not a JSON pointer: it starts with `/` or is empty")
    tokens = []
    for raw in path[1:].split("/"):
        rest = raw.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise ValueError(f"{path!r}: `~` is escaped as `~0` (and `/` as `~1`)")
        token = raw.replace("~1", "/").replace("~0", "~")
        digits = token.isascii() and token.isdigit() and (token == "0" or token[0] != "0")
        tokens.append((token, int(token) if digits else None))
    return tuple(tokens)


def _getter(tokens: tuple[tuple[str, int | None], ...], label: str) -> Callable[[Any], Any]:
    """The value a pointer refers to, or `_MISSING`."""
    if not tokens:
        return lambda document: document
    if len(tokens) == 1:  # the common case, without the loop
        ((key, _),) = tokens
        if tokens[0][1] is None:

            def member(document: Any) -> Any:
                if type(document) is dict:
                    found = document.get(key, _MISSING)
                    if found is _MISSING:
                        _check_keys(document, label)
                    return found
                return _MISSING

            return member

    def walk(document: Any) -> Any:
        for key, index in tokens:
            kind = type(document)
            if kind is dict:
                found = document.get(key, _MISSING)
                if found is _MISSING:
                    return _check_keys(document, label)
                document = found
            elif kind is list and index is not None and index < len(document):
                document = document[index]
            else:
                return _MISSING
        return document

    return walk


def _check_keys(mapping: Any, label: str) -> Any:
    """A key not found in a MessagePack map whose keys are not all text is a wrong type, not
    a missing field: the pointer could never name such a key (error path only)."""
    if type(mapping) is dict and not all(type(key) is str for key in mapping):
        raise Reject("wrong_type", f"{label}: map keys must be text")
    return _MISSING


def _got(value: Any) -> str:
    """What a value is, in the payload's own terms (error path only)."""
    kind = type(value)
    if kind is dict:
        return "object"
    if kind in (list, tuple):
        return "array"
    names = {str: "text", bool: "boolean", int: "integer", float: "number", bytes: "bytes"}
    if kind in names:
        return names[kind]
    return "timestamp" if kind is datetime else "extension"


def _wrong(label: str, expected: str, value: Any) -> Reject:
    return Reject("wrong_type", f"{label}: expected {expected}, got {_got(value)}")


def _to_float8(value: Any, label: str) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return float(value)
        raise Reject("non_finite_value", f"{label}: {value}")
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise Reject("non_finite_value", f"{label}: beyond the range of float8") from None
    raise _wrong(label, "float8", value)


def _integer(name: str) -> Convert:
    low, high = _RANGES[name]

    def convert(value: Any, label: str) -> int:
        if type(value) is int:  # not bool, not float: 1.0 is refused like 1.5
            if low <= value <= high:
                return int(value)
            raise Reject("wrong_type", f"{label}: expected {name}, {low}..{high}, got {value}")
        raise _wrong(label, name, value)

    return convert


def _to_bool(value: Any, label: str) -> bool:
    if type(value) is bool:
        return bool(value)
    raise _wrong(label, "bool", value)


def _to_text(value: Any, label: str) -> str:
    if type(value) is not str:
        raise _wrong(label, "text", value)
    if "\x00" in value:
        raise Reject("invalid_text", f"{label}: text contains NUL, which PostgreSQL cannot store")
    try:
        value.encode()
    except UnicodeEncodeError:  # the decoders refuse these; a default could hold one
        raise Reject("invalid_text", f"{label}: text holds a lone surrogate") from None
    return str(value)


def _to_uuid(value: Any, label: str) -> uuid.UUID:
    if type(value) is str:
        try:
            return msgspec.convert(value, uuid.UUID)
        except msgspec.ValidationError:
            raise Reject("wrong_type", f"{label}: expected uuid, got {value[:64]!r}") from None
    raise _wrong(label, "uuid", value)


def _to_timestamp(value: Any, label: str) -> int:
    """pgtime microseconds from epoch milliseconds, RFC 3339 text or a MessagePack timestamp;
    the clock window is checked by the column (a default is not in any window)."""
    kind = type(value)
    if kind is int:
        return pgtime.from_epoch_ms(value)
    if kind is str:
        try:
            value = msgspec.convert(value, datetime)
        except msgspec.ValidationError:
            raise Reject(
                "wrong_type", f"{label}: expected timestamptz (RFC 3339), got {value[:64]!r}"
            ) from None
    elif kind is not datetime:
        raise _wrong(label, "timestamptz (RFC 3339 text or epoch milliseconds)", value)
    if value.tzinfo is None:
        raise Reject("wrong_type", f"{label}: timestamptz {value.isoformat()} has no UTC offset")
    return pgtime.from_datetime(value)


def _out_of_window(label: str, ts: int, earliest: int, latest: int) -> Reject:
    shown = [_shown(us) for us in (ts, earliest, latest)]
    return Reject(
        "timestamp_out_of_window", f"{label}: {shown[0]} is outside [{shown[1]}, {shown[2]}]"
    )


def _shown(us: int) -> str:
    try:
        return pgtime.to_datetime(us).isoformat()
    except OverflowError:
        return f"{us} us"


def _jsonb_converter(fmt: str) -> Convert:
    """Any value as its JSON text. From JSON only a NUL can stand in the way (msgspec's output
    escapes it, so one search finds it); from MessagePack every value is checked first."""

    def from_json(value: Any, label: str) -> str:
        text = _to_json(value)
        if b"\\u0000" in text and has_nul_escape(text):
            raise Reject("invalid_text", f"{label}: text contains NUL, which jsonb cannot hold")
        return str(text, "utf-8")

    def from_msgpack(value: Any, label: str) -> str:
        _check_json_form(value, label, "wrong_type")
        return str(_to_json(value), "utf-8")

    return from_json if fmt == "json" else from_msgpack


def _check_json_form(value: Any, label: str, reason: str) -> None:
    """Refuse what JSON text (or jsonb) cannot hold faithfully, without recursion: bin and
    extension values and keys that are not text (`reason`), NaN and infinities, NUL (the
    parsers already refuse invalid UTF-8 and lone surrogates). msgspec would write bytes as
    base64, NaN as null and a key 1 as "1" without a word."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            for key in item:
                if type(key) is not str:
                    raise Reject(reason, f"{label}: map keys must be text, got {_got(key)}")
                _check_text(key, label)
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        elif kind is str:
            _check_text(item, label)
        elif kind is float:
            if not math.isfinite(item):
                raise Reject("non_finite_value", f"{label}: {item}")
        elif kind not in (int, bool, datetime) and item is not None:
            raise Reject(reason, f"{label}: JSON has no {_got(item)} values")


def _check_text(text: str, label: str) -> None:
    if "\x00" in text:
        raise Reject("invalid_text", f"{label}: text contains NUL, which jsonb cannot hold")


_CONVERTERS: dict[str, Convert] = {
    "timestamptz": _to_timestamp,
    "float8": _to_float8,
    "int8": _integer("int8"),
    "int4": _integer("int4"),
    "bool": _to_bool,
    "text": _to_text,
    "uuid": _to_uuid,
}
