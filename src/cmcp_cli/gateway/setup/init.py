"""`cmcp init`: from an upstream's address or command to a folder `cmcp start` serves.

In order: the arguments and the folder are checked (a file init would write that already
exists is refused unless `force`); the config is built in memory and the upstream's tools
are listed through it, exactly as the gateway will reach it; every tool is approved into
a catalog (the user's explicit act of review: data class as chosen, groups from each
tool's annotations); only then are the files written. Nothing is written when the
upstream cannot be listed. The folder is then checked as `cmcp validate-config` checks it,
and each tool's call is decided by the starter policy, to show what it will do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from cmcp_cli.catalog.model import CatalogEntry
from cmcp_cli.catalog.pinning import approved_entry, write_catalog
from cmcp_cli.config import CmcpConfig, HttpUpstream, validate_data
from cmcp_cli.errors import CatalogError, CmcpError, UsageError
from cmcp_cli.gateway.preflight.report import ConfigReport, check_config
from cmcp_cli.gateway.setup import starter_policy
from cmcp_cli.gateway.setup.next_steps import NextSteps, next_steps, preview_decisions
from cmcp_cli.gateway.setup.starter_config import (
    HttpTarget,
    UpstreamTarget,
    config_text,
)
from cmcp_cli.gateway.setup.target import (
    InitRequest,
    checked_data_class,
    checked_listen,
    checked_name,
    upstream_target,
)
from cmcp_cli.gateway.upstream.listing import ListingError, list_configured_tools

CONFIG_FILE = "cmcp-config.yaml"
BUNDLE_DIR = "policies"
CATALOG_FILE = "catalog.json"
OPERATOR_TOKEN_FILE = "operator-token"  # noqa: S105 - a file name, not a secret
OPERATOR_TOKEN_BYTES = 32


class InitWriteError(CmcpError):
    """Writing the folder failed part way; the message names what was written."""


@dataclass(frozen=True)
class ToolRow:
    """One approved tool, and what the starter policy decides for a call of it."""

    name: str
    groups: tuple[str, ...]
    data_class: str
    decision: str  # allow | escalate | deny | redact, as the compiled bundle decides
    policy_ids: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "groups": list(self.groups),
            "data_class": self.data_class,
            "decision": self.decision,
            "policy_ids": list(self.policy_ids),
        }


@dataclass(frozen=True)
class InitResult:
    folder: Path
    config_path: Path
    name: str
    target: UpstreamTarget
    protocol_version: str
    written: tuple[Path, ...]  # relative to `folder`
    kept: tuple[Path, ...]  # other files in the bundle folder, which are part of the bundle
    tools: tuple[ToolRow, ...]
    report: ConfigReport
    operator_token_path: Path
    next: NextSteps

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_json(self) -> dict[str, object]:
        upstream: dict[str, object] = {"name": self.name}
        if isinstance(self.target, HttpTarget):
            upstream |= {
                "transport": "streamable-http",
                "url": self.target.url,
                "headers_from_env": dict(self.target.headers_from_env),
            }
        else:
            upstream |= {
                "transport": "stdio",
                "command": list(self.target.command),
                "cwd": str(self.target.cwd),
                "executable_sha256": self.target.executable_sha256,
            }
        upstream["protocol_version"] = self.protocol_version
        return {
            "ok": self.ok,
            "folder": str(self.folder),
            "config": str(self.config_path),
            "written": [path.as_posix() for path in self.written],
            "kept": [path.as_posix() for path in self.kept],
            "upstream": upstream,
            "tools": [tool.to_json() for tool in self.tools],
            "operator_token_file": str(self.operator_token_path),
            "validation": self.report.to_json(),
            "next": self.next.to_json(),
        }


def init_folder(
    request: InitRequest,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> InitResult:
    """Write a config, a starter bundle and a pinned catalog for one upstream into
    `request.folder`, then check them. Raises `UsageError` for unusable arguments or a
    folder that holds files init would write (unless `force`), `ListingError` when the
    upstream's tools cannot be listed (nothing is written then), `CatalogError` for a tool
    that cannot be pinned, `InitWriteError` when writing fails part way. A folder that
    does not pass the check is left in place: `InitResult.ok` says so."""
    cwd = Path.cwd() if cwd is None else cwd
    environ = os.environ if environ is None else environ
    name = checked_name(request.name)
    data_class = checked_data_class(request.data_class)
    listen = checked_listen(request.listen)
    target = upstream_target(request, cwd)
    folder = (cwd / request.folder.expanduser()).absolute()
    kept = _check_folder(folder, request.force)

    token = secrets.token_urlsafe(OPERATOR_TOKEN_BYTES)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    config_path = folder / CONFIG_FILE
    text = config_text(
        folder=folder, name=name, listen=listen, target=target, operator_digest=digest
    )
    config = _parsed(text, config_path, environ, target)
    try:
        listed = asyncio.run(list_configured_tools(config, base=folder, environ=environ))[name]
        entries = [
            approved_entry(tool, server=name, data_class=data_class) for tool in listed.tools
        ]
    except (ListingError, CatalogError) as exc:
        raise type(exc)(
            f"{exc.message}; nothing was written", problems=exc.problems, hint=exc.hint
        ) from None

    files = {Path(CONFIG_FILE): text}
    bundle = starter_policy.bundle_files(server=name, listen=listen, authored_at=_now())
    files |= {Path(BUNDLE_DIR) / path: content for path, content in bundle.items()}
    written = _write_all(folder, files, entries, token)

    report = check_config(config_path, environ)
    return InitResult(
        folder=folder,
        config_path=config_path,
        name=name,
        target=target,
        protocol_version=listed.protocol_version,
        written=written,
        kept=kept,
        tools=_rows(entries, report),
        report=report,
        operator_token_path=folder / OPERATOR_TOKEN_FILE,
        next=next_steps(config_path, folder / OPERATOR_TOKEN_FILE, listen, cwd, environ),
    )


def planned_files() -> tuple[Path, ...]:
    """Every file init writes, relative to its folder."""
    bundle = starter_policy.bundle_files(server="x", listen="127.0.0.1:1", authored_at=_now())
    return (
        Path(CONFIG_FILE),
        *(Path(BUNDLE_DIR) / path for path in bundle),
        Path(CATALOG_FILE),
        Path(OPERATOR_TOKEN_FILE),
    )


def _check_folder(folder: Path, force: bool) -> tuple[Path, ...]:
    """The files of the bundle folder that init does not write (they stay, and are part of
    the bundle). Refuses a folder that is not one, and, unless `force`, one holding a file
    init would write or other files in its bundle folder."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder", hint="choose another DIR")
    planned = planned_files()
    present = [path for path in planned if _exists(folder / path)]
    others = sorted(set(_bundle_files(folder / BUNDLE_DIR, folder)) - set(planned))
    if (present or others) and not force:
        named = [path.as_posix() for path in (*present, *others)]
        raise UsageError(
            f"{folder} already holds {', '.join(named)}",
            hint="init an empty folder, or pass --force to overwrite the files init writes"
            + (" (other files in policies/ stay, and are part of the bundle)" if others else ""),
        )
    return tuple(others)


def _bundle_files(bundle_dir: Path, folder: Path) -> list[Path]:
    """What a bundle read from `bundle_dir` would take in: every entry that is not a
    folder, outside hidden names (symbolic links not followed), relative to `folder`."""
    found = []
    for root, folders, names in os.walk(bundle_dir):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [
            (Path(root) / name).relative_to(folder) for name in names if not name.startswith(".")
        ]
    return found


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _parsed(
    text: str, config_path: Path, environ: Mapping[str, str], target: UpstreamTarget
) -> CmcpConfig:
    """The config init is about to write, read as `cmcp start` will read it."""
    config = validate_data(yaml.safe_load(text), config_path.parent, environ)
    (upstream,) = config.upstreams.values()
    written = (
        (upstream.url, tuple(upstream.headers_from_env.items()))
        if isinstance(upstream, HttpUpstream)
        else (upstream.command, upstream.cwd)
    )
    wanted = (
        (target.url, target.headers_from_env)
        if isinstance(target, HttpTarget)
        else (target.command, target.cwd)
    )
    if written != wanted:  # the quoting of starter_config failed: never write such a file
        raise AssertionError(f"the config names {written!r}, not {wanted!r}")
    return config


def _write_all(
    folder: Path, files: Mapping[Path, str], entries: Sequence[CatalogEntry], token: str
) -> tuple[Path, ...]:
    """Write every file, each atomically (a file in the way, or a symlink, is replaced,
    never written through). The operator token is readable by its owner only."""
    written: list[Path] = []
    try:
        (folder / BUNDLE_DIR).mkdir(parents=True, exist_ok=True)
        for relative, content in files.items():
            _replace(folder / relative, content.encode(), 0o644)
            written.append(relative)
        write_catalog(folder / CATALOG_FILE, entries)
        written.append(Path(CATALOG_FILE))
        _replace(folder / OPERATOR_TOKEN_FILE, (token + "\n").encode(), 0o600)
        written.append(Path(OPERATOR_TOKEN_FILE))
    except (OSError, CmcpError) as exc:
        reason = exc.message if isinstance(exc, CmcpError) else (exc.strerror or str(exc))
        done = ", ".join(path.as_posix() for path in written) or "nothing"
        raise InitWriteError(
            f"writing {folder} failed: {reason}; written so far: {done}",
            hint="fix the cause, then run cmcp init again with --force",
        ) from exc
    return tuple(written)


def _replace(path: Path, data: bytes, mode: int) -> None:
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _rows(entries: Sequence[CatalogEntry], report: ConfigReport) -> tuple[ToolRow, ...]:
    decisions = preview_decisions(report)
    rows = []
    for entry in entries:
        decided = decisions.get(entry.name)
        rows.append(
            ToolRow(
                name=entry.name,
                groups=tuple(entry.groups),
                data_class=str(entry.data_class),
                decision=decided.effect.value if decided else "unknown",
                policy_ids=decided.policy_ids if decided else (),
            )
        )
    return tuple(rows)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
