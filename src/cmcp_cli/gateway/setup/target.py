"""What `cmcp init` is told about its upstream and its folder, checked before anything is
contacted or written."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from cmcp_cli.config import DEFAULT_DATA_CLASS_ORDER, EnvName, HttpUpstream, parse_listen_addr
from cmcp_cli.errors import UsageError
from cmcp_cli.gateway.preflight.checks import file_sha256
from cmcp_cli.gateway.setup.starter_config import HttpTarget, StdioTarget, UpstreamTarget
from cmcp_cli.gateway.upstream.spawn import resolve_executable

# An upstream name is a YAML key, a catalog `server` and a Cedar `Server::"..."` id: kept to
# characters that need quoting in none of them.
UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_VARIABLE = TypeAdapter(EnvName)  # as the config checks a headers_from_env variable
DEFAULT_NAME = "upstream"
DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_DATA_CLASS = "internal"


@dataclass(frozen=True)
class InitRequest:
    """The arguments of `cmcp init`. Exactly one of `upstream_url` and `upstream_command`."""

    folder: Path
    upstream_url: str | None = None
    upstream_command: str | None = None
    name: str = DEFAULT_NAME
    data_class: str = DEFAULT_DATA_CLASS
    listen: str = DEFAULT_LISTEN
    # HEADER=VARIABLE: a header sent to an HTTP upstream, its value read from the environment
    headers_from_env: tuple[str, ...] = ()
    force: bool = False


def checked_listen(listen: str) -> str:
    """The listen address as the config writes it; loopback only. A gateway other hosts
    reach needs agent credentials and TLS, which a starter folder cannot choose."""
    try:
        address = parse_listen_addr(listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    if not address.is_loopback:
        raise UsageError(
            f"--listen {listen}: cmcp init writes a gateway on loopback only",
            hint="init on 127.0.0.1, then add agent credentials and TLS to the config before "
            "listening elsewhere (docs/configuration.md, security rules)",
        )
    return str(address)


def checked_name(name: str) -> str:
    if UPSTREAM_NAME.fullmatch(name) is None:
        raise UsageError(
            f"--name {name!r} is not a usable upstream name",
            hint="use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
        )
    return name


def checked_data_class(data_class: str) -> str:
    if data_class not in DEFAULT_DATA_CLASS_ORDER:
        raise UsageError(
            f"--data-class {data_class!r} is not one of {', '.join(DEFAULT_DATA_CLASS_ORDER)}",
            hint="the config's policy.data_class_order ranks these; choose one of them",
        )
    return data_class


def upstream_target(request: InitRequest, cwd: Path) -> UpstreamTarget:
    """The upstream as the config will name it. A command is split as a POSIX shell splits
    it (no expansion), and its executable is found here, once: relative to `cwd`, or on
    PATH. Its absolute path and digest are what the config pins."""
    if (request.upstream_url is None) == (request.upstream_command is None):
        raise UsageError(
            "give exactly one of --upstream-url and --upstream-command",
            hint="--upstream-url http://127.0.0.1:8000/mcp for a server that is running, or "
            "--upstream-command 'python server.py' for one the gateway starts (stdio)",
        )
    if request.upstream_url is not None:
        url = request.upstream_url
        try:
            HttpUpstream(transport="streamable-http", url=url)
        except ValueError:
            raise UsageError(
                f"--upstream-url {url!r} is not an http:// or https:// URL",
                hint="give the server's MCP endpoint, such as http://127.0.0.1:8000/mcp",
            ) from None
        return HttpTarget(url, _headers_from_env(request.headers_from_env))
    if request.headers_from_env:
        raise UsageError(
            "--header-from-env is for --upstream-url: a stdio server gets no HTTP headers",
            hint="give a stdio server what it needs in its command, or under env in the config",
        )
    assert request.upstream_command is not None  # noqa: S101 - exactly one is set, above
    try:
        command = shlex.split(request.upstream_command)
    except ValueError as exc:
        raise UsageError(f"--upstream-command cannot be split into words: {exc}") from None
    if not command:
        raise UsageError("--upstream-command is empty", hint="give the command that starts it")
    executable = resolve_executable(command[0], cwd)
    if executable is None or not executable.is_file():
        raise UsageError(
            f"--upstream-command: {command[0]!r} is not a file here nor a program on PATH",
            hint="give the path of the server's executable, or a program on PATH",
        )
    # absolute, not resolved: a virtualenv's python finds its environment from its own path
    executable = (cwd / executable).absolute()
    if not os.access(executable, os.X_OK):
        raise UsageError(
            f"--upstream-command: {executable} is not executable",
            hint=f"chmod +x {shlex.quote(str(executable))}, or start it through its interpreter",
        )
    return StdioTarget(
        command=(str(executable), *command[1:]),
        cwd=cwd,
        executable_sha256=file_sha256(executable),
    )


def _headers_from_env(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`HEADER=VARIABLE` pairs, checked: the config names the variable, never its value."""
    headers: dict[str, str] = {}
    for pair in pairs:
        header, _, variable = pair.partition("=")
        if _HEADER_NAME.fullmatch(header) is None or not _is_variable(variable):
            raise UsageError(
                f"--header-from-env {pair!r} is not HEADER=VARIABLE",
                hint="for example --header-from-env Authorization=MY_SERVER_AUTH, with "
                "MY_SERVER_AUTH holding the header's whole value ('Bearer ...')",
            )
        if header.lower() in (name.lower() for name in headers):
            raise UsageError(f"--header-from-env names the header {header!r} twice")
        headers[header] = variable
    return tuple(headers.items())


def _is_variable(name: str) -> bool:
    try:
        _VARIABLE.validate_python(name)
    except ValidationError:
        return False
    return True
