"""Starting a stdio upstream's child: its executable resolved, checked and (when pinned)
hashed before it runs, and its environment kept to what is configured.

Before every spawn the executable is resolved exactly as `cmcp validate-config` resolves it
and, when `executable_sha256` pins it, hashed: a mismatch refuses the spawn. The child gets
a minimal environment (PATH, HOME and LANG from the gateway's, then the configured `env`),
never the gateway's own secrets. Its stderr is drained (never left to fill its pipe) into
the debug log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cmcp_cli.gateway.upstream.api import CLOSE_TIMEOUT_SECONDS, UpstreamError

if TYPE_CHECKING:
    from cmcp_cli.gateway.upstream.stdio import StdioUpstream

SAFE_ENVIRONMENT = ("PATH", "HOME", "LANG")
STDERR_LOG_BYTES = 64 * 1024  # of each child's stderr, logged at debug; the rest is drained
_STDERR_LINE_BYTES = 1000
_ELF_MAGIC = b"\x7fELF"
_Stamp = tuple[int, int, int, int, int]


def resolve_executable(command: str, base: Path) -> Path | None:
    """The file a stdio upstream's command runs: a path relative to the config, or from PATH."""
    if os.sep in command or (os.altsep and os.altsep in command):
        candidate = Path(command).expanduser()
        return candidate if candidate.is_absolute() else base / candidate
    found = shutil.which(command)
    return Path(found) if found else None


def child_environment(configured: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The configured variables over PATH, HOME and LANG from `environ`: nothing else of
    the gateway's environment (its CMCP_* tokens above all) reaches a child."""
    return {**{k: environ[k] for k in SAFE_ENVIRONMENT if k in environ}, **configured}


async def spawn_verified(upstream: StdioUpstream) -> asyncio.subprocess.Process:
    """Start the upstream's child, having checked (and, when pinned, hashed) its executable."""
    path = resolve_executable(upstream.command[0], upstream.base)
    if path is None:
        raise UpstreamError(upstream.name, f"command {upstream.command[0]!r} is not found on PATH")
    path = path.absolute()  # the child changes to `cwd` before it runs the program
    if upstream.cwd is not None and not upstream.cwd.is_dir():
        raise UpstreamError(upstream.name, f"its cwd {upstream.cwd} is not a directory")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UpstreamError(upstream.name, f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise UpstreamError(upstream.name, f"{path} is not a regular file")
        if upstream.executable_sha256 is not None:
            # The thread owns (and closes) a duplicate, so a cancelled wait never
            # leaves it reading a descriptor number that was closed and reused.
            actual = await asyncio.to_thread(_sha256_and_close, os.dup(fd))
            if actual != upstream.executable_sha256:
                raise UpstreamError(
                    upstream.name,
                    f"refusing to run {_named(path)}: it hashes to {actual}, not the "
                    f"pinned executable_sha256 {upstream.executable_sha256}; review the file, "
                    "then update the pin",
                )
        native = os.pread(fd, len(_ELF_MAGIC), 0) == _ELF_MAGIC
        process = await _spawn(upstream, path, fd, native=native)
        if _stamp(os.fstat(fd)) != _stamp(before):
            await _kill_and_reap(process)
            raise UpstreamError(
                upstream.name, f"{path} changed while it was checked and started; not run"
            )
        return process
    finally:
        os.close(fd)


async def _spawn(
    upstream: StdioUpstream, path: Path, fd: int, *, native: bool
) -> asyncio.subprocess.Process:
    # A native executable runs from the descriptor that was hashed, so a file put at
    # the path afterwards is not the one run; a write into the hashed file before the
    # exec shows in its ctime, checked once the child runs. argv[0] still names the
    # path, where programs such as a virtualenv's python find their surroundings. A
    # script runs by path, because its interpreter reopens it by name and finds its
    # folder from it: a file swapped in at that path, or written into it, between that
    # check and the interpreter's read would run instead, a window open only to
    # whoever can write to the file or its folder.
    try:
        return await asyncio.create_subprocess_exec(
            str(path),
            *upstream.command[1:],
            executable=f"/proc/self/fd/{fd}" if native else str(path),
            pass_fds=(fd,) if native else (),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(upstream.env),
            cwd=upstream.cwd,
            limit=upstream.max_response_bytes,  # one message per line: bounds a response
            start_new_session=True,  # its own process group, stopped as a whole
        )
    except OSError as exc:
        raise UpstreamError(upstream.name, f"cannot start {path}: {exc.strerror or exc}") from exc


def _sha256_and_close(fd: int) -> str:
    """The sha256 of the file open on `fd`, from its start; closes `fd`."""
    with os.fdopen(fd, "rb") as handle:
        handle.seek(0)
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def _named(path: Path) -> str:
    """The path, and the file it leads to when that is another (a symlink's target)."""
    real = os.path.realpath(path)
    return str(path) if real == str(path) else f"{path} (-> {real})"


def _stamp(status: os.stat_result) -> _Stamp:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


async def _kill_and_reap(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await process.wait()


async def drain_stderr(process: asyncio.subprocess.Process, who: str, log: logging.Logger) -> None:
    """Read a child's stderr to its end, so that it never blocks on a full pipe, and log its
    first STDERR_LOG_BYTES line by line at debug, each line after `who`."""
    stderr = process.stderr
    assert stderr is not None  # noqa: S101 - spawned with stderr=PIPE
    budget = STDERR_LOG_BYTES
    partial = b""
    while chunk := await stderr.read(1 << 14):
        if budget <= 0 or not log.isEnabledFor(logging.DEBUG):
            continue
        *lines, partial = (partial + chunk).split(b"\n")
        if len(partial) > _STDERR_LINE_BYTES:
            lines.append(partial)
            partial = b""
        budget = _log_stderr(lines, budget, who, log)
    if partial and budget > 0:
        _log_stderr([partial], budget, who, log)


def _log_stderr(lines: list[bytes], budget: int, who: str, log: logging.Logger) -> int:
    for line in lines:
        if budget <= 0:
            log.debug("%s: stderr no longer logged", who)
            break
        budget -= len(line) + 1
        text = line[:_STDERR_LINE_BYTES].decode("utf-8", "replace").rstrip()
        log.debug("%s stderr: %s", who, text)
    return budget
