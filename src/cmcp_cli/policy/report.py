"""The library behind `cmcp validate-bundle`: load, compile, and compare with a pin."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cmcp_cli.claim.canonical import is_sha256_tagged
from cmcp_cli.errors import UsageError
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import CompiledBundle, compile_bundle, unpermitted_actions
from cmcp_cli.policy.request import MessageKind
from cmcp_cli.strict_json import read_json_file


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # "added", "removed" or "changed"
    before: str | None
    after: str | None


@dataclass(frozen=True)
class BundleReport:
    bundle: CompiledBundle
    expected_hash: str | None
    changes: tuple[FileChange, ...]  # against the baseline, when one was given

    @property
    def hash(self) -> str:
        return self.bundle.hash

    @property
    def warnings(self) -> list[str]:
        """What the bundle refuses by omission: each message kind no permit names (Cedar's
        default deny applies to every kind), so upgraders notice what agents lose."""
        return [
            _UNPERMITTED.get(kind, f"no permit names {kind}: every {kind} request is denied")
            for kind in unpermitted_actions(self.bundle, [k.value for k in MessageKind])
        ]

    @property
    def matches(self) -> bool | None:
        return None if self.expected_hash is None else self.expected_hash == self.hash

    def to_json(self) -> dict[str, object]:
        source = self.bundle.source
        return {
            "bundle_path": str(source.root),
            "bundle_hash": self.hash,
            "ok": self.matches is not False,
            "expected_hash": self.expected_hash,
            "hash_matches": self.matches,
            "files": {f.path: f.digest for f in source.files},
            "schema": source.schema_file is not None,
            "manifest": {
                "version": source.manifest.version,
                "authored_at": source.manifest.authored_at,
                "author": source.manifest.author,
            },
            "policies": [
                {
                    "id": p.id,
                    "effect": p.effect,
                    "file": p.file,
                    "line": p.line,
                    "annotations": dict(p.annotations),
                }
                for p in self.bundle.policies.values()
            ],
            "warnings": self.warnings,
            "changes": [
                {"path": c.path, "change": c.change, "before": c.before, "after": c.after}
                for c in self.changes
            ],
        }


_UNPERMITTED = {
    "call_tool": "no permit names call_tool: every tool call is denied",
    "list_tools": "no permit names list_tools: agents will see no tools "
    '(add `permit (principal, action == Action::"list_tools", resource);`)',
    "read_resource": "no permit names read_resource: every resources/read is denied",
    "get_prompt": "no permit names get_prompt: every prompts/get is denied",
    "create_message": "no permit names create_message: upstreams cannot sample the agent's model",
    "elicit": "no permit names elicit: upstreams cannot ask the user for input",
    "list_roots": "no permit names list_roots: upstreams cannot list the client's roots",
}


def validate_bundle(
    bundle_path: Path, expected_hash: str | None = None, baseline: Path | None = None
) -> BundleReport:
    """Read and compile a bundle and compare its hash with the expected one.

    `baseline` is an earlier `validate-bundle --json` report: its files explain a
    mismatch file by file, and its hash is the expected one unless `expected_hash` is given.
    Raises `UsageError` for unusable arguments and `BundleError` for a broken bundle.
    """
    if expected_hash is not None and not is_sha256_tagged(expected_hash):
        raise UsageError(
            f"--expected-hash {expected_hash!r} is not 'sha256:' and 64 lowercase hex digits"
        )
    baseline_files: Mapping[str, str] | None = None
    if baseline is not None:
        baseline_hash, baseline_files = _read_baseline(baseline)
        expected_hash = expected_hash or baseline_hash
    bundle = compile_bundle(read_bundle(bundle_path))
    changes: tuple[FileChange, ...] = ()
    if baseline_files is not None:
        current = {f.path: f.digest for f in bundle.source.files}
        changes = _diff(baseline_files, current)
    return BundleReport(bundle=bundle, expected_hash=expected_hash, changes=changes)


def _read_baseline(path: Path) -> tuple[str, Mapping[str, str]]:
    document = read_json_file(path, "baseline")
    files = document.get("files") if isinstance(document, dict) else None
    digest = document.get("bundle_hash") if isinstance(document, dict) else None
    if (
        not isinstance(files, dict)
        or not isinstance(digest, str)
        or not is_sha256_tagged(digest)
        or not all(isinstance(v, str) for v in files.values())
    ):
        raise UsageError(
            f"baseline {path} is not a `cmcp validate-bundle --json` report",
            hint="save one with: cmcp validate-bundle --bundle-path DIR --json > baseline.json",
        )
    return digest, files


def _diff(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[FileChange, ...]:
    changes = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        kind = "added" if old is None else "removed" if new is None else "changed"
        changes.append(FileChange(path, kind, old, new))
    return tuple(changes)
