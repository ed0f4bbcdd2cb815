"""`cmcp catalog pin` and `cmcp catalog diff`: a config's catalog against what its
upstreams advertise now, and the catalog updated from it.

Both read the config without requiring its catalog to exist (a first `pin` creates it),
connect to the configured upstreams exactly as the gateway does (`upstream_channels`, with
their credentials), and compare with `catalog.pinning.compare`. Any input that cannot be
used (the config, the catalog, an upstream that cannot be listed) is a `UsageError`, so
that `diff` exits 1 only for drift.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from cmcp_cli.catalog.model import CatalogEntry, load_catalog
from cmcp_cli.catalog.pinning import Approval, Comparison, compare, updated_entries, write_catalog
from cmcp_cli.config import CmcpConfig, load_config
from cmcp_cli.errors import CmcpError, UsageError
from cmcp_cli.gateway.upstream.listing import ServerTools, list_configured_tools

_Loaded = TypeVar("_Loaded")


class UnusableInputError(UsageError):
    """The config or its catalog cannot be read: nothing was compared."""


@dataclass(frozen=True)
class CatalogDrift:
    """A catalog compared with its upstreams' listings."""

    config_path: Path
    catalog_path: Path
    listed: Mapping[str, ServerTools]  # the compared upstreams, in the config's order
    comparison: Comparison
    catalog_exists: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "config": str(self.config_path),
            "catalog": str(self.catalog_path),
            "upstreams": {
                name: {
                    "location": found.location,
                    "protocol_version": found.protocol_version,
                    "tool_count": len(found.tools),
                }
                for name, found in self.listed.items()
            },
            **self.comparison.to_json(),
        }


@dataclass(frozen=True)
class PinOutcome:
    """What `pin_catalog` found, and what it did to the catalog file."""

    drift: CatalogDrift
    written: bool  # False when the file already said exactly this
    created: bool
    catalog_hash: str  # of the catalog as it now is on disk (approved tools only)
    added_pending: tuple[str, ...] = ()
    added_approved: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()
    not_updated: tuple[str, ...] = ()  # changed upstream, definition kept (no --update)
    not_pruned: tuple[str, ...] = ()  # advertised by no upstream, entry kept (no --prune)
    pending: tuple[str, ...] = ()  # every tool of the catalog still pending review
    next_steps: tuple[str, ...] = ()  # what a reviewer must do now, for people

    def to_json(self) -> dict[str, object]:
        return {
            **self.drift.to_json(),
            "created": self.created,
            "written": self.written,
            "catalog_hash": self.catalog_hash,
            "actions": {
                "added_pending": list(self.added_pending),
                "added_approved": list(self.added_approved),
                "updated": list(self.updated),
                "pruned": list(self.pruned),
                "not_updated": list(self.not_updated),
                "not_pruned": list(self.not_pruned),
            },
            "pending": list(self.pending),
            "next_steps": list(self.next_steps),
        }


def diff_catalog(
    config_path: Path,
    *,
    servers: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CatalogDrift:
    """The config's catalog against what its upstreams (or `servers` only) advertise.
    Writes nothing. `UsageError` when the config, the catalog or an upstream cannot be
    used; a missing catalog is one (`pin` creates it)."""
    environ = os.environ if environ is None else environ
    config = _config(config_path, environ)
    if not config.catalog_path.exists():
        raise UnusableInputError(
            f"catalog {config.catalog_path} does not exist",
            hint=f"create it with `cmcp catalog pin --config {config_path}`",
        )
    entries = _entries(config.catalog_path)
    return _compared(config_path, config, entries, servers, environ, exists=True)


def pin_catalog(
    config_path: Path,
    *,
    update: bool = False,
    prune: bool = False,
    approve_new: Approval | None = None,
    servers: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PinOutcome:
    """Write the config's catalog from what its upstreams (or `servers` only) advertise:
    new tools added pending review (approved only with `approve_new`), changed definitions
    replaced only with `update`, tools no longer advertised dropped only with `prune`.
    The file is created when missing, replaced atomically, and left untouched when nothing
    changes. `UsageError` for unusable input or an `approve_new` data class outside
    `policy.data_class_order`."""
    environ = os.environ if environ is None else environ
    config = _config(config_path, environ)
    if approve_new is not None:
        _check_approval(config, approve_new)
    path = config.catalog_path
    exists = path.exists()
    before = _read(path) if exists else None
    entries = _entries(path) if exists else ()
    drift = _compared(config_path, config, entries, servers, environ, exists=exists)
    comparison = drift.comparison
    after = updated_entries(
        entries, comparison, update=update, prune=prune, approve_new=approve_new
    )
    written = after != entries or not exists
    if written:
        if (_read(path) if path.exists() else None) != before:
            raise UsageError(
                f"catalog {path} changed while its upstreams were listed; nothing was written",
                hint="run `cmcp catalog pin` again",
            )
        write_catalog(path, after)
    catalog = load_catalog(path)  # what was written reads back as a valid catalog
    changed = [c.name for c in comparison.of("changed")]
    updated = [c.name for c in comparison.of("changed") if update and c.live is not None]
    removed = [c.name for c in comparison.of("removed")]
    added = [c.name for c in comparison.of("added") if c.live is not None]
    outcome = PinOutcome(
        drift=drift,
        written=written,
        created=not exists,
        catalog_hash=catalog.hash,
        added_pending=tuple(added) if approve_new is None else (),
        added_approved=tuple(added) if approve_new is not None else (),
        updated=tuple(updated),
        pruned=tuple(removed) if prune else (),
        not_updated=tuple(name for name in changed if name not in updated),
        not_pruned=() if prune else tuple(removed),
        pending=tuple(catalog.pending),
    )
    return _with_next_steps(outcome, config_path, config)


def _with_next_steps(outcome: PinOutcome, config_path: Path, config: CmcpConfig) -> PinOutcome:
    path = outcome.drift.catalog_path
    steps: list[str] = []
    if outcome.pending:
        order = ", ".join(config.policy.data_class_order)
        steps.append(
            f"review the {len(outcome.pending)} tool(s) pending in {path}: set each one's "
            f"data_class (one of {order}) and groups to approve it; until then the gateway "
            "neither lists nor forwards it"
        )
    if outcome.updated:
        steps.append(
            "the updated definitions keep their data_class and groups: check the diffs "
            "above still fit them"
        )
    if outcome.not_updated:
        steps.append(
            "changed definitions were kept as pinned (the gateway refuses those tools as "
            "drifted): review the diffs, then run `cmcp catalog pin --update`"
        )
    if outcome.not_pruned:
        steps.append(
            "tools the upstreams no longer advertise are still in the catalog: run "
            "`cmcp catalog pin --prune` to drop them"
        )
    if outcome.drift.comparison.problems:
        steps.append("some tools could not be pinned: see the problems above")
    if outcome.written:
        steps.append(
            f"run `cmcp validate-config --config {config_path}`, then restart the gateway "
            "to serve the new catalog"
        )
    return replace(outcome, next_steps=tuple(steps))


def _compared(
    config_path: Path,
    config: CmcpConfig,
    entries: Sequence[CatalogEntry],
    servers: Collection[str] | None,
    environ: Mapping[str, str],
    *,
    exists: bool,
) -> CatalogDrift:
    listed = asyncio.run(
        list_configured_tools(config, base=config_path.parent, environ=environ, servers=servers)
    )
    comparison = compare(entries, {name: found.tools for name, found in listed.items()})
    return CatalogDrift(config_path, config.catalog_path, listed, comparison, exists)


def _config(path: Path, environ: Mapping[str, str]) -> CmcpConfig:
    """The config model, without reading what it references: its catalog may not exist."""
    return _usable(
        lambda: load_config(path, environ).model, f"run `cmcp validate-config --config {path}`"
    )


def _entries(path: Path) -> tuple[CatalogEntry, ...]:
    return _usable(
        lambda: load_catalog(path).entries,
        "fix the catalog first: pinning updates a catalog that is valid",
    )


def _usable(load: Callable[[], _Loaded], hint: str) -> _Loaded:
    """What `load` reads; a file that is there but wrong is unusable input (exit 2), with
    its own hint or `hint`. A missing or unreadable file keeps its own error."""
    try:
        return load()
    except UsageError:
        raise
    except CmcpError as exc:
        raise UnusableInputError(exc.message, problems=exc.problems, hint=exc.hint or hint) from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read catalog {path}: {exc.strerror or exc}") from exc


def _check_approval(config: CmcpConfig, approval: Approval) -> None:
    order = config.policy.data_class_order
    if approval.data_class not in order:
        raise UsageError(
            f"data class {approval.data_class!r} is not in policy.data_class_order",
            hint=f"choose one of {', '.join(order)}",
        )
    groups = approval.groups or ()
    if any(not group or group != group.strip() for group in groups):
        raise UsageError("a --group is empty or has leading or trailing white space")
    if len(set(groups)) != len(groups):
        raise UsageError("a --group is given more than once")
