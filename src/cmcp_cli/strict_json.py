"""JSON parsing that refuses what would make a document mean two things.

Python's `json` keeps the last of duplicate keys and accepts NaN and Infinity; a
security tool must not, because another reader of the same bytes may decide otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmcp_cli.errors import UsageError


class StrictJSONError(ValueError):
    """The text is not one unambiguous JSON document; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def loads_strict(data: bytes | str) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, NaN and the infinities."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(
            text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"{exc.msg} (column {exc.colno})", line=exc.lineno) from exc
    except RecursionError as exc:
        raise StrictJSONError("nested too deeply") from exc


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file the user named; `UsageError` (exit 2) when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        return loads_strict(data)
    except StrictJSONError as exc:
        raise UsageError(f"{what} {path} is not JSON: {exc}") from exc
