"""Loading the tool catalog and computing its definition and catalog hashes.

A tool's approved definition is what its upstream must advertise in `tools/list`, in
MCP's own field names. Its hash is `sha256:` + hex SHA-256 of the RFC 8785 bytes of
`{"name": <name>, <definition fields>}`; the catalog hash covers, per approved tool, its
routing, classification and definition hash (see docs/configuration.md), so a verifier can
pin the whole catalog with one string.

An entry without `data_class` is pending review: it was pinned from an upstream (`cmcp
catalog pin`) and no reviewer has classified it yet. Pending tools are kept apart
(`Catalog.pending`): they are neither in `Catalog.tools` nor in the catalog hash, so the
gateway never lists, decides or forwards them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cmcp_cli.claim.canonical import CanonicalizationError, canonical_sha256, sha256_tagged
from cmcp_cli.errors import CatalogError, Problem, UsageError
from cmcp_cli.model_errors import format_location, problems_from_validation
from cmcp_cli.strict_json import StrictJSONError, loads_strict

CATALOG_FORMAT = 1
MAX_CATALOG_BYTES = 16 * 1024 * 1024
DEFINITION_FIELDS = ("title", "description", "inputSchema", "outputSchema", "annotations")

NonEmpty = Annotated[str, Field(min_length=1)]


class ToolDefinition(BaseModel):
    """The approved MCP definition of one tool (the `tools/list` entry without its name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str | None = None
    description: str | None = None
    inputSchema: dict[str, Any]  # noqa: N815 - MCP's field name
    outputSchema: dict[str, Any] | None = None  # noqa: N815
    annotations: dict[str, Any] | None = None


class CatalogEntry(BaseModel):
    """One tool of a catalog file; approved once it has a `data_class`, pending before."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: NonEmpty
    server: NonEmpty
    groups: tuple[NonEmpty, ...] = ()
    data_class: NonEmpty | None = None
    definition: ToolDefinition
    definition_hash: str | None = None

    @property
    def pending(self) -> bool:
        return self.data_class is None

    @field_validator("name")
    @classmethod
    def _exact(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError(
                f"{value!r} has leading or trailing white space; names are matched exactly"
            )
        return value

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a group more than once")
        return value


class CatalogDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    catalog_version: int
    tools: tuple[CatalogEntry, ...]

    @field_validator("catalog_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != CATALOG_FORMAT:
            raise ValueError(f"version {value} is not supported; this cMCP reads {CATALOG_FORMAT}")
        return value


@dataclass(frozen=True, slots=True)
class CatalogTool:
    name: str
    server: str
    groups: tuple[str, ...]
    data_class: str
    definition: Mapping[str, Any]  # the hashed object: name plus the definition fields present
    definition_hash: str


@dataclass(frozen=True, slots=True)
class PendingTool:
    """A catalog entry no reviewer has approved yet: never listed, decided or forwarded."""

    name: str
    server: str
    definition: Mapping[str, Any]
    definition_hash: str


@dataclass(frozen=True)
class Catalog:
    path: Path
    tools: Mapping[str, CatalogTool]  # the approved tools: the only ones the gateway serves
    hash: str  # covers `tools` only
    pending: Mapping[str, PendingTool] = field(default_factory=dict)
    entries: tuple[CatalogEntry, ...] = ()  # the file's entries, in its order

    @property
    def servers(self) -> frozenset[str]:
        return frozenset(tool.server for tool in self.tools.values())


def unapproved_reason(catalog: Catalog, name: str) -> str:
    """Why a call to `name`, which is not an approved tool, is refused: what an agent and
    the audit log are told, naming the fix when the tool is pending review."""
    if name in catalog.pending:
        return (
            f"{name!r} is pending review in the catalog {catalog.path}: set its data_class "
            "and groups to approve it, then restart the gateway"
        )
    return f"{name!r} is not in the approved catalog"


def approved_definition(name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The object whose hash pins a tool: its name and the definition fields that are set.

    Works on a catalog entry and on an upstream's `tools/list` entry alike, which is what
    makes drift detection a comparison of two hashes.
    """
    definition: dict[str, Any] = {"name": name}
    for key in DEFINITION_FIELDS:
        value = fields.get(key)
        if value is not None:
            definition[key] = value
    return definition


def definition_hash(definition: Mapping[str, Any]) -> str:
    return canonical_sha256(dict(definition))


def advertised_hash(definition: Mapping[str, Any]) -> str:
    """The hash of a definition an upstream advertises, compared with its pin. One with no
    canonical form (an integer beyond 2**53, say) cannot match any pin: it gets the digest
    of its sorted ASCII-escaped serialisation, which makes it drift, never an exception."""
    try:
        return definition_hash(definition)
    except CanonicalizationError:
        return sha256_tagged(json.dumps(dict(definition), sort_keys=True).encode())


def catalog_hash(tools: Mapping[str, CatalogTool]) -> str:
    return canonical_sha256(
        {
            "cmcp_catalog": CATALOG_FORMAT,
            "tools": {
                name: {
                    "server": tool.server,
                    "groups": sorted(tool.groups),
                    "data_class": tool.data_class,
                    "definition_hash": tool.definition_hash,
                }
                for name, tool in tools.items()
            },
        }
    )


def load_catalog(path: Path) -> Catalog:
    """Read and check a catalog file; `CatalogError` lists every problem found."""
    document = read_catalog_document(path)
    where = str(path)
    problems: list[Problem] = []
    tools: dict[str, CatalogTool] = {}
    pending: dict[str, PendingTool] = {}
    seen: set[str] = set()
    for index, entry in enumerate(document.tools):
        checked = _checked_tool(entry, index, where, seen, problems)
        seen.add(entry.name)
        if isinstance(checked, CatalogTool):
            tools[checked.name] = checked
        elif isinstance(checked, PendingTool):
            pending[checked.name] = checked
    if problems:
        raise CatalogError(f"catalog {path} is invalid", problems=problems)
    return Catalog(
        path=path,
        tools=tools,
        hash=catalog_hash(tools),
        pending=pending,
        entries=document.tools,
    )


def read_catalog_document(path: Path) -> CatalogDocument:
    """A catalog file's entries as written, checked for shape only (`load_catalog` checks
    them against each other and their hashes)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"catalog {path} does not exist", hint="check catalog_path") from None
    except OSError as exc:
        raise UsageError(f"cannot read catalog {path}: {exc.strerror or exc}") from exc
    where = str(path)
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError(f"catalog {path} is {len(data)} bytes; the limit is {MAX_CATALOG_BYTES}")
    try:
        document = CatalogDocument.model_validate(loads_strict(data))
    except StrictJSONError as exc:
        raise CatalogError(
            f"catalog {path} is not valid JSON",
            problems=[Problem(str(exc), file=where, line=exc.line)],
        ) from None
    except ValidationError as exc:
        raise CatalogError(
            f"catalog {path} is invalid",
            problems=problems_from_validation(exc, CatalogDocument, file=where),
        ) from None
    return document


def _checked_tool(
    entry: CatalogEntry,
    index: int,
    where: str,
    seen: Collection[str],
    problems: list[Problem],
) -> CatalogTool | PendingTool | None:
    at = format_location(("tools", index))
    if entry.name in seen:
        problems.append(
            Problem(
                f"{at}: tool {entry.name!r} is listed twice",
                file=where,
                hint="each tool name must be unique: calls are routed and decided by name",
            )
        )
        return None
    fields = {key: getattr(entry.definition, key) for key in DEFINITION_FIELDS}
    definition = approved_definition(entry.name, fields)
    try:
        digest = definition_hash(definition)
    except CanonicalizationError as exc:
        problems.append(Problem(f"{at}: definition has no canonical JSON form: {exc}", file=where))
        return None
    if entry.definition_hash is not None and entry.definition_hash != digest:
        problems.append(
            Problem(
                f"{at}: tool {entry.name!r} states definition_hash {entry.definition_hash} "
                f"but its definition hashes to {digest}",
                file=where,
                hint="the definition was edited after approval; re-approve it and update "
                "definition_hash, or restore the approved definition",
            )
        )
        return None
    if entry.data_class is None:
        if entry.groups:
            problems.append(
                Problem(
                    f"{at}: tool {entry.name!r} has groups but no data_class: it is neither "
                    "approved nor plainly pending review",
                    file=where,
                    hint="set its data_class to approve it (one of policy.data_class_order), "
                    "or remove its groups to leave it pending review",
                )
            )
            return None
        return PendingTool(entry.name, entry.server, definition, digest)
    return CatalogTool(
        name=entry.name,
        server=entry.server,
        groups=entry.groups,
        data_class=entry.data_class,
        definition=definition,
        definition_hash=digest,
    )
