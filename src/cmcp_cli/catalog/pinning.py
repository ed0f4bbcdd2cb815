"""Comparing a catalog with what its upstreams advertise, and updating it: pure, but for
`write_catalog`.

A tool's definition is what `approved_definition` takes from its `tools/list` entry, and
it is compared by `advertised_hash`, exactly as the gateway compares it when a session
connects: a catalog written from a listing is one the gateway finds no drift in. Only tools
are pinned; resources and prompts are decided by policy per message.

New tools enter the catalog pending review (no `data_class`, no `groups`): the gateway
neither lists nor forwards them until a reviewer sets both (or `approved_entry` builds them
approved, for a caller that was told to approve). A changed definition replaces the pinned
one only when asked, keeping the reviewer's classification; a tool the upstream stopped
advertising is dropped only when asked.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cmcp_cli.catalog.model import (
    CATALOG_FORMAT,
    DEFINITION_FIELDS,
    CatalogEntry,
    ToolDefinition,
    advertised_hash,
    approved_definition,
    definition_hash,
)
from cmcp_cli.claim.canonical import CanonicalizationError
from cmcp_cli.errors import CatalogError, Problem, UsageError

Change = Literal["added", "changed", "removed", "unchanged"]
READ_ONLY = "read-only"
READ_WRITE = "read-write"


def groups_for(definition: Mapping[str, Any]) -> tuple[str, ...]:
    """The groups a newly approved tool gets from its annotations (a `tools/list` entry or
    an approved definition): `("read-only",)` when `annotations.readOnlyHint` is true,
    else `("read-write",)`. A hint is the upstream's claim, so anything but JSON `true`
    counts as read-write."""
    annotations = definition.get("annotations")
    read_only = isinstance(annotations, Mapping) and annotations.get("readOnlyHint") is True
    return (READ_ONLY,) if read_only else (READ_WRITE,)


def pending_entry(tool: Mapping[str, Any], *, server: str) -> CatalogEntry:
    """The catalog entry of a `tools/list` entry, pending review. `CatalogError` when the
    definition cannot be pinned (no `inputSchema` object, a field of the wrong type, no
    canonical JSON form)."""
    name = tool.get("name")
    if not isinstance(name, str) or not name or name != name.strip():
        raise CatalogError(
            f"upstream {server!r} lists a tool named {name!r}, which cannot be pinned"
        )
    definition = approved_definition(name, tool)
    try:
        fields = ToolDefinition.model_validate({k: v for k, v in definition.items() if k != "name"})
    except ValidationError as exc:
        raise CatalogError(
            f"tool {name!r} of upstream {server!r} has a definition that cannot be pinned: "
            f"{_reasons(exc)}",
            hint="fix the tool's definition in the upstream server",
        ) from None
    entry = CatalogEntry(
        name=name, server=server, definition=fields, definition_hash=advertised_hash(definition)
    )
    try:
        pinned = _pinned_hash(entry, strict=True)
    except CanonicalizationError as exc:
        raise CatalogError(
            f"tool {name!r} of upstream {server!r} has a definition with no canonical JSON "
            f"form: {exc}",
            hint="fix the tool's definition in the upstream server",
        ) from None
    if pinned != entry.definition_hash:  # the entry would drift as soon as it is served
        raise CatalogError(
            f"tool {name!r} of upstream {server!r} does not keep its definition when written "
            "to the catalog",
            hint="fix the tool's definition in the upstream server",
        )
    return entry


def approved_entry(
    tool: Mapping[str, Any],
    *,
    server: str,
    data_class: str,
    groups: Sequence[str] | None = None,
) -> CatalogEntry:
    """The catalog entry of a `tools/list` entry, approved with `data_class` and `groups`
    (by default `groups_for` the tool). The caller checks `data_class` against the
    config's `policy.data_class_order`. `CatalogError` as `pending_entry`."""
    return approve(pending_entry(tool, server=server), data_class=data_class, groups=groups)


def approve(
    entry: CatalogEntry, *, data_class: str, groups: Sequence[str] | None = None
) -> CatalogEntry:
    """`entry` approved with `data_class` and `groups` (by default `groups_for` it);
    `UsageError` for an empty data class, or groups that are empty or repeated."""
    chosen = tuple(groups) if groups is not None else groups_for(_definition_of(entry))
    try:
        return CatalogEntry.model_validate(
            {**entry.model_dump(), "data_class": data_class, "groups": chosen}
        )
    except ValidationError as exc:
        raise UsageError(f"tool {entry.name!r} cannot be approved so: {_reasons(exc)}") from None


@dataclass(frozen=True)
class ToolChange:
    """One tool, as the catalog pins it and as its upstream advertises it."""

    name: str
    server: str
    change: Change
    approved: bool  # the catalog holds it with a data_class (added ones: False)
    pinned_hash: str | None  # None for an added tool
    live_hash: str | None  # None for a removed tool
    live: CatalogEntry | None  # the advertised definition as a pending entry, if pinnable
    diff: str = ""  # for a changed tool: unified diff of the canonical definitions

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "server": self.server,
            "change": self.change,
            "approved": self.approved,
            "catalog_hash": self.pinned_hash,
            "upstream_hash": self.live_hash,
            "diff": self.diff or None,
        }


@dataclass(frozen=True)
class Comparison:
    """Every compared tool (catalog entries in file order, then added ones in listing
    order) and what cannot be pinned (a tool the catalog routes to another upstream, a
    definition that cannot be written)."""

    changes: tuple[ToolChange, ...]
    problems: tuple[Problem, ...]

    def of(self, change: Change) -> tuple[ToolChange, ...]:
        return tuple(found for found in self.changes if found.change == change)

    @property
    def in_sync(self) -> bool:
        """Nothing added, changed or removed, and nothing that cannot be pinned."""
        return not self.problems and all(c.change == "unchanged" for c in self.changes)

    def counts(self) -> dict[str, int]:
        kinds: tuple[Change, ...] = ("added", "changed", "removed", "unchanged")
        return {kind: len(self.of(kind)) for kind in kinds} | {"problems": len(self.problems)}

    def to_json(self) -> dict[str, object]:
        return {
            "in_sync": self.in_sync,
            "counts": self.counts(),
            "tools": [found.to_json() for found in self.changes],
            "problems": [problem.to_json() for problem in self.problems],
        }


def compare(
    entries: Sequence[CatalogEntry], live: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Comparison:
    """The catalog `entries` against `live`, the `tools/list` entries per upstream (each
    name once per upstream). Only upstreams in `live` are compared: an entry routed to
    another one is left out, neither unchanged nor removed."""
    pinned = {entry.name: entry for entry in entries}
    advertised: dict[str, dict[str, Mapping[str, Any]]] = {
        server: {str(tool.get("name")): tool for tool in tools} for server, tools in live.items()
    }
    problems: list[Problem] = []
    changes: list[ToolChange] = []
    for entry in entries:
        if entry.server not in advertised:
            continue
        tool = advertised[entry.server].get(entry.name)
        pinned_hash = _pinned_hash(entry)
        if tool is None:
            changes.append(
                ToolChange(
                    entry.name, entry.server, "removed", not entry.pending, pinned_hash, None, None
                )
            )
            continue
        live_hash = advertised_hash(approved_definition(entry.name, tool))
        candidate = _candidate(tool, entry.server, problems)
        if live_hash == pinned_hash:
            change = ToolChange(
                entry.name,
                entry.server,
                "unchanged",
                not entry.pending,
                pinned_hash,
                live_hash,
                candidate,
            )
        else:
            change = ToolChange(
                entry.name,
                entry.server,
                "changed",
                not entry.pending,
                pinned_hash,
                live_hash,
                candidate,
                definition_diff(
                    _definition_of(entry), approved_definition(entry.name, tool), entry.server
                ),
            )
        changes.append(change)
    claimed: dict[str, str] = {}
    for server, tools in advertised.items():
        for name, tool in tools.items():
            owner = pinned[name].server if name in pinned else claimed.get(name)
            if owner is not None and owner != server:
                problems.append(
                    Problem(
                        f"upstream {server!r} lists tool {name!r}, which the catalog routes "
                        f"to upstream {owner!r}: calls are routed by name, so only one can "
                        "be pinned",
                        hint="rename the tool in one of the upstreams, or remove the other "
                        "entry from the catalog",
                    )
                )
                continue
            if name in pinned:
                continue
            claimed[name] = server
            candidate = _candidate(tool, server, problems)
            if candidate is not None:
                added = candidate.definition_hash
                changes.append(ToolChange(name, server, "added", False, None, added, candidate))
    return Comparison(tuple(changes), tuple(problems))


@dataclass(frozen=True)
class Approval:
    """How tools added by `updated_entries` are approved: this data class, and these groups
    (None: `groups_for` each tool)."""

    data_class: str
    groups: tuple[str, ...] | None = None


def updated_entries(
    entries: Sequence[CatalogEntry],
    comparison: Comparison,
    *,
    update: bool = False,
    prune: bool = False,
    approve_new: Approval | None = None,
) -> tuple[CatalogEntry, ...]:
    """The catalog entries after pinning `comparison`: added tools appended (pending, or
    approved as `approve_new` says); with `update`, each changed definition replaced by the
    advertised one, keeping the entry's groups and data_class; with `prune`, each removed
    tool dropped. Everything else is kept as it is."""
    by_key = {(found.name, found.server): found for found in comparison.changes}
    kept: list[CatalogEntry] = []
    for entry in entries:
        found = by_key.get((entry.name, entry.server))
        if found is None or found.change == "unchanged":
            kept.append(entry)
        elif found.change == "removed":
            if not prune:
                kept.append(entry)
        elif update and found.live is not None:
            kept.append(
                entry.model_copy(
                    update={
                        "definition": found.live.definition,
                        "definition_hash": found.live.definition_hash,
                    }
                )
            )
        else:
            kept.append(entry)
    for found in comparison.of("added"):
        if found.live is None:
            continue
        if approve_new is None:
            kept.append(found.live)
        else:
            kept.append(
                approve(found.live, data_class=approve_new.data_class, groups=approve_new.groups)
            )
    return tuple(kept)


def definition_diff(pinned: Mapping[str, Any], advertised: Mapping[str, Any], server: str) -> str:
    """A unified diff of two definitions, each as sorted, indented JSON."""
    name = visible(str(pinned.get("name", advertised.get("name"))))
    before = _pretty(pinned).splitlines(keepends=True)
    after = _pretty(advertised).splitlines(keepends=True)
    lines = difflib.unified_diff(
        before, after, fromfile=f"catalog: {name}", tofile=f"upstream {server}: {name}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def catalog_json(entries: Sequence[CatalogEntry]) -> dict[str, Any]:
    """A catalog document in its written layout: each entry's keys in the order name,
    server, groups, data_class, definition, definition_hash (groups and data_class only on
    approved tools), each definition's fields in MCP's order."""
    return {"catalog_version": CATALOG_FORMAT, "tools": [_entry_json(e) for e in entries]}


def catalog_text(entries: Sequence[CatalogEntry]) -> str:
    """The text `write_catalog` writes: indented JSON, UTF-8, a final newline."""
    return json.dumps(catalog_json(entries), indent=2, ensure_ascii=False) + "\n"


def write_catalog(path: Path, entries: Sequence[CatalogEntry]) -> None:
    """Replace `path` with a catalog of `entries`, atomically: a reader sees the old file
    or the whole new one, never a part. The text goes to a temporary file in the same
    folder, is synced to disk, and is renamed over `path`; the folder is synced after."""
    text = catalog_text(entries).encode()
    folder = path.parent
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError(
            f"cannot write the catalog in {folder}: {exc.strerror or exc}",
            hint="check that the folder of catalog_path exists and is writable",
        ) from exc
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.chmod(_mode_of(path))
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise UsageError(f"cannot write the catalog {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_folder(folder)


def _mode_of(path: Path) -> int:
    """The mode the catalog keeps: the replaced file's, else readable by all."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs a directory
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _entry_json(entry: CatalogEntry) -> dict[str, Any]:
    written: dict[str, Any] = {"name": entry.name, "server": entry.server}
    if not entry.pending or entry.groups:
        written["groups"] = list(entry.groups)
    if entry.data_class is not None:
        written["data_class"] = entry.data_class
    definition = _definition_of(entry)
    written["definition"] = {k: definition[k] for k in DEFINITION_FIELDS if k in definition}
    written["definition_hash"] = _pinned_hash(entry)
    return written


def _definition_of(entry: CatalogEntry) -> dict[str, Any]:
    fields = {key: getattr(entry.definition, key) for key in DEFINITION_FIELDS}
    return approved_definition(entry.name, fields)


def _pinned_hash(entry: CatalogEntry, *, strict: bool = False) -> str:
    """The hash of an entry's definition as written (with `strict`, raising for one with no
    canonical form instead of the digest that matches nothing)."""
    definition = _definition_of(entry)
    return definition_hash(definition) if strict else advertised_hash(definition)


def visible(text: str) -> str:
    """`text` with each character that is not printable (control and format characters,
    line separators, spaces other than U+0020) written as a Python escape: what an upstream
    says can neither drive a reviewer's terminal nor hide in it."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _pretty(definition: Mapping[str, Any]) -> str:
    """Sorted, indented JSON, each character that is not printable written as a JSON
    escape (the same value), so that a diff shows every difference."""
    text = json.dumps(dict(definition), indent=2, sort_keys=True, ensure_ascii=False)
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape(ch) for ch in text) + "\n"


def _json_escape(ch: str) -> str:
    return json.dumps(ch)[1:-1]  # ensure_ascii: \uXXXX, a surrogate pair past U+FFFF


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def _candidate(
    tool: Mapping[str, Any], server: str, problems: list[Problem]
) -> CatalogEntry | None:
    try:
        return pending_entry(tool, server=server)
    except CatalogError as exc:
        problems.append(Problem(exc.message, hint=exc.hint))
        return None
