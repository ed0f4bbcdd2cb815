"""`cmcp bridge`: a running gateway as a stdio MCP server, for stdio-only clients."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cmcp_cli.bridge.options import DEFAULT_TIMEOUT_SECONDS
from cmcp_cli.bridge.stdio import serve_stdio
from cmcp_cli.cli import render
from cmcp_cli.config import ENV_BEARER_TOKEN
from cmcp_cli.errors import ExitCode

Url = Annotated[
    str,
    typer.Option("--url", help="The gateway's MCP endpoint, e.g. http://127.0.0.1:8443/mcp."),
]
TokenEnv = Annotated[
    str | None,
    typer.Option(
        "--token-env",
        metavar="NAME",
        help=f"The environment variable holding the bearer token (default: {ENV_BEARER_TOKEN}, "
        "when set). The token itself is never a command-line value.",
    ),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", metavar="SECONDS", help="How long to wait for each answer."),
]
Challenge = Annotated[
    str | None,
    typer.Option(
        "--challenge",
        metavar="CHALLENGE",
        help="A verifier's challenge (16 to 64 random bytes, base64url without padding) that "
        "the sessions this bridge opens are bound to; check it with `cmcp verify "
        "--expected-nonce`.",
    ),
]


def bridge_command(
    url: Url,
    token_env: TokenEnv = None,
    timeout: Timeout = DEFAULT_TIMEOUT_SECONDS,
    challenge: Challenge = None,
) -> int:
    """Serve MCP on stdin/stdout, every message relayed to a running gateway."""
    serve_stdio(
        url,
        token_env=token_env,
        timeout_seconds=timeout,
        diagnose=_diagnose,
        challenge=challenge,
    )
    return int(ExitCode.OK)


def _diagnose(text: str) -> None:
    render.err.print(f"cmcp bridge: {escape(text)}", soft_wrap=True)
