"""The configured upstreams as channels, and what tools each one advertises.

`upstream_channels` is the one place a config's upstreams become channels: the running
gateway (`build_runtime`) and every command that lists tools (`cmcp catalog`, `cmcp
init`, pinning at first contact) connect the same way, with the same credentials
(`headers`, `headers_from_env`), timeouts, stdio environment and working folder.

`list_tools` pages through `tools/list` on an open conversation: it follows `nextCursor`
for at most MAX_PAGES pages and refuses a cursor it was given before, so an upstream can
neither hold a lister in a loop nor make it read without end. `list_upstream_tools` opens
a conversation of either protocol era (2026-07-28 where the upstream serves it, else an
initialized session), lists, and closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcp_cli.catalog.pinning import visible
from cmcp_cli.config import CmcpConfig, HttpUpstream
from cmcp_cli.errors import Problem, UsageError
from cmcp_cli.gateway.upstream.api import UpstreamChannel, UpstreamConversation, UpstreamError
from cmcp_cli.gateway.upstream.modern_client import open_conversation
from cmcp_cli.gateway.upstream.stdio import stdio_upstreams
from cmcp_cli.gateway.upstream.streamable_http import McpUpstream
from cmcp_cli.wire.http1 import Endpoint

MAX_PAGES = 100  # of one tools/list; an upstream with more is refused, never truncated


class ListingError(UsageError):
    """Some upstream's tools could not be listed; one problem per upstream that failed."""


@dataclass(frozen=True)
class ServerTools:
    """What one upstream advertised in `tools/list`, every page, in its order."""

    server: str
    location: str  # where the upstream is, for people (a URL, or the command started)
    protocol_version: str  # the revision the listing conversation spoke
    tools: tuple[dict[str, Any], ...]  # the raw `tools/list` entries, each named uniquely


def upstream_channels(
    config: CmcpConfig, *, base: Path, environ: Mapping[str, str]
) -> dict[str, UpstreamChannel]:
    """The config's upstreams as channels, in the config's order. `base` is the config
    file's folder (a relative stdio command or cwd is relative to it); `environ` supplies
    `headers_from_env` values and the stdio children's inherited variables. Nothing is
    contacted until a conversation is opened; `close()` each channel when done."""
    stdio = stdio_upstreams(config, base=base, environ=environ)
    channels: dict[str, UpstreamChannel] = {}
    for name, upstream in config.upstreams.items():
        if isinstance(upstream, HttpUpstream):
            channels[name] = McpUpstream(
                name=name,
                endpoint=Endpoint.parse(upstream.url),
                headers=upstream_headers(upstream, environ),
                timeout_seconds=float(
                    min(upstream.timeout_seconds, config.limits.upstream_timeout_seconds)
                ),
                max_response_bytes=config.max_response_size_bytes,
            )
        else:
            channels[name] = stdio[name]
    return channels


def upstream_headers(upstream: HttpUpstream, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The headers sent with every request to an HTTP upstream: the configured ones, and
    those whose value is read from the environment (a variable that is not set is left
    out: validate-config reports it, and the upstream refuses the request)."""
    headers = [(name.lower(), value) for name, value in upstream.headers.items()]
    headers += [
        (name.lower(), environ[variable])
        for name, variable in upstream.headers_from_env.items()
        if variable in environ
    ]
    return headers


async def list_tools(
    conversation: UpstreamConversation, upstream: str, *, max_pages: int = MAX_PAGES
) -> tuple[dict[str, Any], ...]:
    """Every tool `conversation` advertises, page after page. `UpstreamError` when a page
    is an error or malformed, an entry is not an object with a string `name`, a name is
    listed twice, a cursor repeats, or there are more than `max_pages` pages."""
    tools: list[dict[str, Any]] = []
    names: set[str] = set()
    cursors: set[str] = set()
    cursor: str | None = None
    for _ in range(max_pages):
        answer = await conversation.request(
            "tools/list", {} if cursor is None else {"cursor": cursor}
        )
        page = answer.get("result")
        entries = page.get("tools") if isinstance(page, dict) else None
        if not isinstance(page, dict) or not isinstance(entries, list):
            raise UpstreamError(upstream, f"tools/list failed: {answer.get('error', answer)}")
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(name, str) or not name:
                raise UpstreamError(upstream, f"tools/list holds an entry without a name: {entry}")
            if name in names:
                raise UpstreamError(upstream, f"tools/list names the tool {name!r} twice")
            names.add(name)
            tools.append(entry)
        cursor = page.get("nextCursor")
        if cursor is None:
            return tuple(tools)
        if not isinstance(cursor, str):
            raise UpstreamError(upstream, f"tools/list gave a nextCursor {cursor!r}, not a string")
        if cursor in cursors:
            raise UpstreamError(upstream, f"tools/list gave the cursor {cursor!r} twice")
        cursors.add(cursor)
    raise UpstreamError(upstream, f"tools/list has more than {max_pages} pages")


async def list_upstream_tools(channel: UpstreamChannel) -> ServerTools:
    """Open a conversation with `channel` (2026-07-28 when the upstream serves it, else
    `initialize`), list its tools, and close the conversation; `UpstreamError` when it
    cannot be reached or its listing is refused (see `list_tools`)."""
    conversation = await open_conversation(channel, modern=True)
    try:
        tools = await list_tools(conversation, channel.name)
    finally:
        await conversation.close()
    return ServerTools(channel.name, channel.describe(), conversation.protocol_version, tools)


async def list_configured_tools(
    config: CmcpConfig,
    *,
    base: Path,
    environ: Mapping[str, str],
    servers: Collection[str] | None = None,
) -> dict[str, ServerTools]:
    """The tools of every configured upstream (or of `servers` only), in the config's order,
    listed concurrently. `ListingError` names every upstream that failed, each with what to
    check; `UsageError` for a name in `servers` that is not configured."""
    unknown = sorted(set(servers or ()) - set(config.upstreams))
    if unknown:
        raise UsageError(
            f"no upstream named {', '.join(map(repr, unknown))} is configured",
            hint=f"configured upstreams: {', '.join(config.upstreams) or 'none'}",
        )
    channels = upstream_channels(config, base=base, environ=environ)
    wanted = [name for name in channels if servers is None or name in servers]
    try:
        listed = await asyncio.gather(
            *(list_upstream_tools(channels[name]) for name in wanted), return_exceptions=True
        )
    finally:
        for channel in channels.values():
            channel.close()
    problems = [
        _listing_problem(config, name, channels[name], found, environ)
        for name, found in zip(wanted, listed, strict=True)
        if isinstance(found, BaseException)
    ]
    if problems:
        raise ListingError(
            f"could not list the tools of {len(problems)} upstream{'s' * (len(problems) != 1)}",
            problems=problems,
        )
    return {found.server: found for found in listed if isinstance(found, ServerTools)}


def _listing_problem(
    config: CmcpConfig,
    name: str,
    channel: UpstreamChannel,
    failure: BaseException,
    environ: Mapping[str, str],
) -> Problem:
    if not isinstance(failure, UpstreamError):
        raise failure  # not an upstream's fault: a bug, with its traceback
    upstream = config.upstreams[name]
    if isinstance(upstream, HttpUpstream):
        check = f"that {channel.describe()} is up and serves MCP"
        variables = sorted(upstream.headers_from_env.values())
        unset = [variable for variable in variables if not environ.get(variable)]
        if unset:
            check = f"{', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set: " + (
                "export the credential the upstream expects (headers_from_env), then retry"
            )
        elif variables:
            check += f", and that {', '.join(variables)} hold the credential it accepts"
    else:
        check = f"that `{channel.describe()}` starts and speaks MCP on stdout"
    return Problem(visible(str(failure)), hint=f"check upstreams.{name}: {check}")
