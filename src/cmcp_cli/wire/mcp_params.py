"""`Mcp-Name` and `Mcp-Param-*` headers of the 2026-07-28 revision, both directions.

A tool's input schema may mark a scalar argument with `x-mcp-header: TOKEN`; a client then
mirrors that argument into an `Mcp-Param-TOKEN` header so intermediaries can route on it.
Headers and body must agree: present together, equal after decoding, absent together.
The gateway decides on the body, refuses a request whose headers say something else, and
sends the upstream headers computed from what it forwards, never the client's.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any

PARAM_PREFIX = "mcp-param-"
X_MCP_HEADER = "x-mcp-header"
HEADER_TYPES = frozenset({"string", "integer", "boolean"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_SAFE = re.compile(r"[\x20-\x7E]*")
_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_MAX_DEPTH = 32  # annotations deeper than this are not looked for


def encode_value(value: str) -> str:
    """A header value carrying `value` exactly: verbatim when it is plain printable ASCII
    without edge whitespace, else wrapped as `=?base64?...?=`."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def decode_value(value: str | None) -> str | None:
    """The text a header carries; a malformed `=?base64?...?=` wrapping is None."""
    if value is None:
        return None
    match = _SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def annotated(schema: object) -> Iterator[tuple[tuple[str, ...], str, Mapping[str, Any]]]:
    """(argument path, header token, property schema) of every valid `x-mcp-header` on a
    chain of `properties` from the schema's root."""
    stack: list[tuple[tuple[str, ...], object]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, Mapping) or len(path) > _MAX_DEPTH:
            continue
        token = node.get(X_MCP_HEADER)
        if (
            path
            and isinstance(token, str)
            and _TOKEN.fullmatch(token)
            and node.get("type") in HEADER_TYPES
        ):
            yield path, token, node
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            stack.extend(((*path, str(key)), sub) for key, sub in properties.items())


def render(value: object) -> str | None:
    """An argument as a header carries it, or None when it has no header form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        try:
            return str(value)
        except ValueError:  # an integer past the interpreter's digit limit
            return None
    return None


def value_at(arguments: object, path: tuple[str, ...]) -> object:
    node = arguments
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def param_headers(schema: object, arguments: object) -> dict[str, str]:
    """The `Mcp-Param-*` headers (lower-case names) a tools/call with these arguments carries."""
    headers: dict[str, str] = {}
    for path, token, _ in annotated(schema):
        rendered = render(value_at(arguments, path))
        if rendered is not None:
            headers[PARAM_PREFIX + token.lower()] = encode_value(rendered)
    return headers


def param_mismatch(schema: object, arguments: object, headers: list[tuple[str, str]]) -> str | None:
    """Why a tools/call's `Mcp-Param-*` headers disagree with its arguments, or None.

    `headers` are the request's (lower-case name, value) pairs, duplicates kept."""
    sent: dict[str, list[str]] = {}
    for name, text in headers:
        if name.startswith(PARAM_PREFIX):
            sent.setdefault(name, []).append(text)
    for path, token, node in annotated(schema):
        header = f"Mcp-Param-{token}"
        raw = sent.get(PARAM_PREFIX + token.lower())
        argument = ".".join(path)
        if raw is not None and len(raw) > 1:
            return f"the {header} header appears more than once"
        value = value_at(arguments, path)
        rendered = None if value is None else render(value)
        if rendered is None:
            if raw is not None:
                return f"the {header} header is sent but the argument {argument!r} is not"
            continue
        if raw is None:
            return (
                f"the {header} header is missing for the argument {argument!r}: send it "
                "with the argument's value"
            )
        decoded = decode_value(raw[0])
        if decoded is None or not _matches(node.get("type"), value, rendered, decoded):
            return f"the {header} header does not match the argument {argument!r}"
    return None


def _matches(kind: object, value: object, rendered: str, decoded: str) -> bool:
    """Integer arguments compare as numbers (`42` matches `42.0`); others as rendered."""
    if (
        kind == "integer"
        and not isinstance(value, bool)
        and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
        and _DECIMAL.fullmatch(decoded)
    ):
        whole, _, fraction = decoded.partition(".")
        return (not fraction or set(fraction) == {"0"}) and int(whole) == int(value)
    return decoded == rendered
