"""Reading one member of a session's log records by name and JSON type.

A record read back from the log is untrusted JSON: a member that is missing or has the
wrong type is a `SessionRecordError` naming the record and the member, never a KeyError
or a value of another type passed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SessionRecordError(ValueError):
    """A session's records lack a member its claim states, or have it with the wrong type."""


def member(record: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """`record[name]` when it is of `kind` (an integer is never a boolean), else
    `SessionRecordError` naming `where` and `name`."""
    if name not in record:
        raise SessionRecordError(f"{where} records no {name}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = _TYPE_NAMES.get(kind, kind.__name__)
        raise SessionRecordError(f"{where} records {name} as {json_type(value)}, not {expected}")
    return value


def optional_member(record: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """A member a record keeps only when it has a value: None when absent."""
    return member(record, name, kind, where) if name in record else None


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    Mapping: "an object",
}


def json_type(value: object) -> str:
    """What `value` is, in JSON's words, for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), "an object" if isinstance(value, Mapping) else "a number")
