"""Pinning the catalog at first contact (`catalog_pinning: first-contact`).

Before a gateway whose catalog file does not exist yet serves anything, it lists every
upstream's tools and writes them to `catalog_path`, each approved as advertised: data
class `first_contact_data_class`, groups from its annotations (`groups_for`). This is
trust on first use: what the upstreams advertised then becomes the pin that later starts
detect drift against. An existing file is never replaced, so a later start (or another
process starting at the same moment) uses the catalog that was pinned first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cmcp_cli.catalog.model import CatalogEntry, load_catalog
from cmcp_cli.catalog.pinning import approved_entry, write_catalog
from cmcp_cli.errors import CatalogError, CmcpError
from cmcp_cli.gateway.enforcement.wiring import authorizer_for
from cmcp_cli.gateway.preflight.report import ConfigReport
from cmcp_cli.gateway.upstream.listing import ListingError, list_configured_tools
from cmcp_cli.policy.engine import CompiledBundle


@dataclass(frozen=True)
class FirstContact:
    """A catalog written at first contact."""

    path: Path
    data_class: str
    servers: Mapping[str, int]  # upstream name -> tools pinned from it

    @property
    def tools(self) -> int:
        return sum(self.servers.values())


class FirstContactError(CmcpError):
    """The catalog could not be pinned at first contact; nothing was written."""


def needs_first_contact(report: ConfigReport) -> bool:
    """Whether the checked config pins its catalog at first contact now: it has no errors,
    its pinning is first-contact and there is no file at its catalog_path."""
    config = report.config
    return (
        report.ok
        and config is not None
        and config.catalog_pinning == "first-contact"
        and not config.catalog_path.exists()
    )


def pin_at_first_contact(report: ConfigReport, environ: Mapping[str, str]) -> FirstContact | None:
    """Write the catalog from every upstream's tools when `needs_first_contact`; None when
    nothing is to be pinned (a config with errors is left to refuse its start).
    `FirstContactError` when an upstream cannot be listed, advertises a tool that cannot
    be pinned, a tool name is advertised twice, no upstream advertises any tool, or the
    checked bundle cannot decide for the tools pinned."""
    config = report.config
    if config is None or not needs_first_contact(report):
        return None
    try:
        listed = asyncio.run(list_configured_tools(config, base=report.base_dir, environ=environ))
    except ListingError as exc:
        raise FirstContactError(
            f"the catalog cannot be pinned at first contact: {exc.message}",
            problems=exc.problems,
            hint=exc.hint,
        ) from exc
    data_class = config.pinned_data_class
    entries: list[CatalogEntry] = []
    servers: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for server, found in listed.items():
        for tool in found.tools:
            name = str(tool["name"])
            if name in first_seen:
                raise FirstContactError(
                    f"the tool {name!r} is advertised by upstreams {first_seen[name]!r} and "
                    f"{server!r}; a call is routed by its name alone",
                    hint="rename it in one upstream, or write the catalog yourself "
                    "(catalog_pinning: explicit)",
                )
            first_seen[name] = server
            try:
                entries.append(approved_entry(tool, server=server, data_class=data_class))
            except CatalogError as exc:
                raise FirstContactError(
                    f"the catalog cannot be pinned at first contact: {exc.message}",
                    hint=exc.hint,
                ) from exc
        servers[server] = len(found.tools)
    if not entries:
        raise FirstContactError(
            "the catalog cannot be pinned at first contact: no upstream advertises any tool",
            hint="check that the upstream serves its tools, or provide a catalog "
            "(catalog_pinning: explicit)",
        )
    path = config.catalog_path
    _write_new(path, entries, report.bundle)
    return FirstContact(path=path, data_class=data_class, servers=servers)


def _write_new(path: Path, entries: list[CatalogEntry], bundle: CompiledBundle | None) -> None:
    """Write the catalog at `path` only if no file is there and `bundle` can decide for
    it: it is written whole beside it, loaded and checked against the bundle as the start
    will check it, and then linked into place, which fails when `path` exists. A catalog
    pinned by another process in the meantime is kept; this one is discarded. A catalog
    the bundle cannot decide for is not written: the start would refuse it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FirstContactError(
            f"cannot create {path.parent} for the catalog: {exc.strerror or exc}",
            hint="check catalog_path (or the state directory) is writable",
        ) from exc
    staged = path.with_name(f".{path.name}.first-contact-{os.getpid()}")
    write_catalog(staged, entries)
    try:
        catalog = load_catalog(staged)
        if bundle is not None:
            try:
                authorizer_for(bundle, catalog)
            except CmcpError as exc:
                raise FirstContactError(
                    f"the tools pinned at first contact do not fit the policy bundle: "
                    f"{exc.message}",
                    problems=exc.problems,
                    hint="pinned tools are in group read-only or read-write; make the "
                    "bundle's schema accept them, or write the catalog yourself "
                    "(catalog_pinning: explicit)",
                ) from exc
        os.link(staged, path)
    except FileExistsError:
        pass  # pinned first by another process: that catalog is the pin
    except OSError as exc:
        raise FirstContactError(
            f"cannot write the catalog {path}: {exc.strerror or exc}",
            hint="check catalog_path (or the state directory) is writable",
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
