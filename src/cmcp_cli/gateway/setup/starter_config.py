"""The `cmcp-config.yaml` that `cmcp init` writes: commented, loopback, one upstream.

Values that come from the command line are written as YAML double-quoted strings with
everything but printable ASCII escaped, which YAML reads as the same strings whatever they
hold (quotes, colons, `#`, line breaks): nothing a user passes can change the document's
structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".state"


@dataclass(frozen=True)
class HttpTarget:
    """An upstream reached over streamable HTTP, with the headers whose values the
    gateway reads from the environment (header, variable)."""

    url: str
    headers_from_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StdioTarget:
    """An upstream the gateway starts: `command[0]` is the executable's absolute path (as
    `cmcp validate-config` and every start resolve and hash it), `cwd` the folder that
    `cmcp init` ran in, so relative arguments keep the meaning they had there."""

    command: tuple[str, ...]
    cwd: Path
    executable_sha256: str


UpstreamTarget = HttpTarget | StdioTarget

_HEADER = """\
# cMCP gateway in front of the MCP server "{name}", written by `cmcp init`.
# Relative paths are relative to this file; every key is in docs/configuration.md.
# Check it with:  cmcp validate-config --config cmcp-config.yaml
# Serve it with:  cmcp start --config cmcp-config.yaml
#   (with CMCP_DEV_MODE=1 in front on a host without SEV-SNP, TDX, Azure CVM or TPM: a
#   development gateway whose claims are not hardware-attested)

attestation:
  provider: auto            # SEV-SNP, TDX, Azure CVM, then TPM; software only with CMCP_DEV_MODE=1
  enforcement_mode: enforcing

policy_bundle_path: ./policies  # read-only tools run, the others wait for an operator
catalog_path: ./catalog.json    # the tools approved at init, each pinned by its definition hash
{listen_line}# loopback: only programs on this machine reach the gateway

upstreams:
  {name}:
"""

_HTTP = """\
    transport: streamable-http
    url: {url}
"""

_NO_HEADERS = """\
    # Credentials for the server go in headers_from_env (header -> environment variable),
    # never in this file, e.g.: headers_from_env: {Authorization: MY_SERVER_AUTH}
"""

_HEADERS = """\
    # Sent with every request; each value is read from the environment variable named,
    # which must be set wherever the gateway (or cmcp validate-config) runs.
    headers_from_env: {{{headers}}}
"""

_STDIO = """\
    transport: stdio
    # The command given to `cmcp init`, started by the gateway for each client session,
    # in the folder init ran in. It gets PATH, HOME and LANG only: list any other
    # variable it needs under env.
    command: [{command}]
    cwd: {cwd}
    env: {{}}
    # The SHA-256 of the executable, checked before every start: a changed file is not
    # run. For a script run by an interpreter this pins the interpreter, not the script.
    # After an upgrade, review it, then paste the digest `cmcp validate-config` shows.
    executable_sha256: {executable_sha256}
"""

_FOOTER = """
auth:
  # The operator approves held calls at /approvals. Its token is in ./operator-token,
  # readable by you alone; this file holds only its SHA-256 digest.
  # Agents need no token in dev mode on loopback; otherwise give each one a token:
  # CMCP_BEARER_TOKEN, or bearer_tokens here (docs/configuration.md).
  operator_token_sha256: {operator_digest}

audit:
  path: ./{state}/audit.db      # the hash-chained audit log (SQLite)

claims:
  dir: ./{state}/claims         # one signed claim per session, also served at /trace/<session>
  trust_domain: cmcp.local
"""


def yaml_string(value: str) -> str:
    """`value` as a YAML double-quoted scalar holding exactly `value`."""
    out = []
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def config_text(
    *, folder: Path, name: str, listen: str, target: UpstreamTarget, operator_digest: str
) -> str:
    """The config file, to be written in `folder`. `name` and `listen` are validated
    identifiers; everything taken from the upstream's address or command is written with
    `yaml_string`."""
    text = _HEADER.format(name=name, listen_line=f"listen_addr: {listen}".ljust(32))
    if isinstance(target, HttpTarget):
        text += _HTTP.format(url=yaml_string(target.url))
        if target.headers_from_env:
            pairs = (f"{yaml_string(h)}: {yaml_string(v)}" for h, v in target.headers_from_env)
            text += _HEADERS.format(headers=", ".join(pairs))
        else:
            text += _NO_HEADERS
    else:
        text += _STDIO.format(
            command=", ".join(yaml_string(part) for part in target.command),
            cwd=yaml_string(_relative_to(target.cwd, folder)),
            executable_sha256=target.executable_sha256,
        )
    return text + _FOOTER.format(operator_digest=operator_digest, state=STATE_DIR)


def _relative_to(path: Path, folder: Path) -> str:
    """`path` as the config names it: relative to the config's folder when it is in it (the
    folder can then move as a whole), else absolute."""
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
