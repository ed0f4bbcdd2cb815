"""Reading a policy bundle from disk and computing its hash (DESIGN §3).

The bytes that are hashed are the bytes that are parsed: a bundle is read once into
memory and everything downstream works from that snapshot, so a file changed on disk
between hashing and parsing cannot make the reported hash describe other policies.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cmcp_cli.claim.canonical import canonical_sha256, sha256_tagged
from cmcp_cli.errors import BundleError, Problem, UsageError
from cmcp_cli.strict_json import StrictJSONError, loads_strict

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
SCHEMA_NAME = "schema.cedarschema"
POLICY_SUFFIX = ".cedar"
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_FILES = 10_000


@dataclass(frozen=True, slots=True)
class BundleFile:
    path: str  # POSIX path relative to the bundle root
    data: bytes
    digest: str  # sha256:<hex> of `data`

    @property
    def is_policy(self) -> bool:
        return self.path.endswith(POLICY_SUFFIX)


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    authored_at: str
    author: str
    extras: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BundleSource:
    """A bundle as read from disk: its files, their digests, its manifest and its hash."""

    root: Path
    files: tuple[BundleFile, ...]  # sorted by path
    manifest: Manifest

    @property
    def hash(self) -> str:
        return bundle_hash({f.path: f.digest for f in self.files})

    @property
    def policy_files(self) -> tuple[BundleFile, ...]:
        return tuple(f for f in self.files if f.is_policy)

    @property
    def schema_file(self) -> BundleFile | None:
        return next((f for f in self.files if f.path == SCHEMA_NAME), None)


def bundle_hash(file_digests: Mapping[str, str]) -> str:
    """The bundle hash of DESIGN §3 from `{relative posix path: "sha256:<hex>"}`."""
    return canonical_sha256({"cmcp_bundle": BUNDLE_FORMAT, "files": dict(file_digests)})


def read_bundle(root: Path) -> BundleSource:
    """Read every regular, non-hidden file below `root`.

    Raises `UsageError` when `root` is not a readable directory and `BundleError` (with
    every problem found, not only the first) when the bundle itself is unacceptable.
    """
    if not root.exists():
        raise UsageError(
            f"policy bundle {root} does not exist",
            hint="pass the directory that holds the *.cedar files and manifest.json",
        )
    if root.is_symlink() or not root.is_dir():
        raise UsageError(
            f"policy bundle {root} is not a directory",
            hint="pass the bundle directory itself, not a file in it or a link to it",
        )
    problems: list[Problem] = []
    files = _read_tree(root, problems)
    if not problems and not any(f.is_policy for f in files):
        problems.append(
            Problem(
                f"{root} holds no *.cedar policy files; an empty bundle would deny everything",
                file=str(root),
                hint="add at least one .cedar file, or point at the right directory",
            )
        )
    manifest = _parse_manifest(root, files, problems)
    if problems or manifest is None:
        raise BundleError(f"policy bundle {root} cannot be used", problems=problems)
    return BundleSource(root=root, files=tuple(files), manifest=manifest)


def _read_tree(root: Path, problems: list[Problem]) -> list[BundleFile]:
    files: list[BundleFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            child = here / name
            if name.startswith("."):
                dirnames.remove(name)
            elif child.is_symlink():
                dirnames.remove(name)
                problems.append(_symlink_problem(root, child))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            bundle_file = _read_file(root, path, problems)
            if bundle_file is not None:
                files.append(bundle_file)
            if len(files) > MAX_FILES:
                problems.append(Problem(f"more than {MAX_FILES} files", file=str(root)))
                return files
    files.sort(key=lambda f: f.path)
    return files


def _read_file(root: Path, path: Path, problems: list[Problem]) -> BundleFile | None:
    relative = PurePosixPath(*path.relative_to(root).parts).as_posix()
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        problems.append(
            Problem(
                "file name is not valid UTF-8, so it has no canonical form in the bundle hash",
                file=str(path),
                hint="rename the file",
            )
        )
        return None
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            problems.append(_symlink_problem(root, path))
            return None
        if not stat.S_ISREG(info.st_mode):
            problems.append(Problem("not a regular file", file=str(path), hint="remove it"))
            return None
        if info.st_size > MAX_FILE_BYTES:
            problems.append(
                Problem(
                    f"file is {info.st_size} bytes; the limit is {MAX_FILE_BYTES}", file=str(path)
                )
            )
            return None
        # O_NOFOLLOW closes the window between lstat and open in which a file could be
        # swapped for a link.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(f"cannot read: {exc.strerror or exc}", file=str(path)))
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.append(
            Problem(f"file grew past {MAX_FILE_BYTES} bytes while read", file=str(path))
        )
        return None
    return BundleFile(path=relative, data=data, digest=sha256_tagged(data))


def _symlink_problem(root: Path, path: Path) -> Problem:
    return Problem(
        "symbolic links are refused: the bundle hash must describe the files themselves",
        file=str(path),
        hint=f"copy the target into {root} instead of linking it",
    )


def _parse_manifest(
    root: Path, files: list[BundleFile], problems: list[Problem]
) -> Manifest | None:
    where = str(root / MANIFEST_NAME)
    manifest_file = next((f for f in files if f.path == MANIFEST_NAME), None)
    if manifest_file is None:
        problems.append(
            Problem(
                f"{MANIFEST_NAME} is missing",
                file=where,
                hint='add {"version": "1.0.0", "authored_at": "<RFC 3339>", "author": "<who>"}',
            )
        )
        return None
    try:
        document = loads_strict(manifest_file.data)
    except StrictJSONError as exc:
        problems.append(Problem(f"not valid JSON: {exc}", file=where, line=exc.line))
        return None
    if not isinstance(document, dict):
        problems.append(Problem("must be a JSON object", file=where))
        return None
    found: dict[str, str] = {}
    for key in ("version", "authored_at", "author"):
        value = document.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(f'"{key}" must be a non-empty string', file=where))
        else:
            found[key] = value
    authored_at = found.get("authored_at")
    if authored_at is not None and not _is_rfc3339(authored_at):
        problems.append(
            Problem(
                f'"authored_at" is {authored_at!r}, not an RFC 3339 time',
                file=where,
                hint='write it like "2026-11-21T09:30:00Z"',
            )
        )
        return None
    if len(found) != 3:
        return None
    extras = {k: v for k, v in document.items() if k not in found}
    return Manifest(extras=extras, **found)


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _is_rfc3339(text: str) -> bool:
    if _RFC3339.fullmatch(text) is None:
        return False
    try:
        datetime.fromisoformat(text.upper())
    except ValueError:  # well-formed but impossible, such as month 13
        return False
    return True
