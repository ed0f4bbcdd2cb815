"""Reading bundles and the bundle hash of DESIGN §3, recomputed independently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import rfc8785

from cmcp_cli.errors import BundleError, UsageError
from cmcp_cli.policy.bundle import read_bundle
from tests.support import MANIFEST, QUICKSTART, BundleFactory, independent_bundle_hash

POLICY = 'permit(principal, action == Action::"call_tool", resource);\n'


def test_quickstart_hash_matches_the_documented_preimage() -> None:
    source = read_bundle(QUICKSTART / "policies")
    assert source.hash == independent_bundle_hash(QUICKSTART / "policies")
    assert [f.path for f in source.files] == [
        "finance.cedar",
        "manifest.json",
        "messages.cedar",
        "schema.cedarschema",
        "tools.cedar",
    ]
    assert source.schema_file is not None
    assert source.manifest.author == "platform-security@example.org"
    assert source.manifest.extras == {
        "description": "Quickstart bundle: one upstream, three outcomes (allow, deny, redact)."
    }


def test_every_byte_of_every_file_is_covered(make_bundle: BundleFactory) -> None:
    root = make_bundle({"a.cedar": POLICY, "nested/b.cedar": POLICY, "README.md": "notes\n"})
    original = read_bundle(root).hash
    seen = {original}
    manifest = root / "manifest.json"
    manifest_text = manifest.read_text()
    manifest.write_text(manifest_text.replace('"tests"', '"tesTs"'))
    seen.add(read_bundle(root).hash)
    assert len(seen) == 2
    manifest.write_text(manifest_text)
    # Every other file is flipped blindly: a policy byte flip may not even parse, and the
    # hash must still differ (the hash is over bytes, before any parsing).
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != manifest):
        data = path.read_bytes()
        for offset in (0, len(data) // 2, len(data) - 1):
            flipped = bytearray(data)
            flipped[offset] ^= 0x01
            path.write_bytes(bytes(flipped))
            changed = read_bundle(root).hash
            assert changed not in seen, (
                f"flipping byte {offset} of {path.name} did not change the hash"
            )
            seen.add(changed)
            path.write_bytes(data)
    assert read_bundle(root).hash == original


def test_renaming_adding_or_removing_a_file_changes_the_hash(make_bundle: BundleFactory) -> None:
    root = make_bundle({"a.cedar": POLICY})
    original = read_bundle(root).hash
    (root / "a.cedar").rename(root / "b.cedar")
    renamed = read_bundle(root).hash
    (root / "extra.txt").write_text("x")
    added = read_bundle(root).hash
    assert len({original, renamed, added}) == 3
    (root / "extra.txt").unlink()
    assert read_bundle(root).hash == renamed


def test_hidden_files_and_directories_are_not_part_of_the_bundle(
    make_bundle: BundleFactory,
) -> None:
    root = make_bundle({"a.cedar": POLICY})
    before = read_bundle(root).hash
    (root / ".editor-swap").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    assert read_bundle(root).hash == before


def test_symlinked_file_is_refused(make_bundle: BundleFactory, tmp_path: Path) -> None:
    root = make_bundle({"a.cedar": POLICY})
    outside = tmp_path / "outside.cedar"
    outside.write_text(POLICY)
    (root / "linked.cedar").symlink_to(outside)
    with pytest.raises(BundleError) as caught:
        read_bundle(root)
    assert any(
        "symbolic links are refused" in p.message and p.file and p.file.endswith("linked.cedar")
        for p in caught.value.problems
    )


def test_symlinked_directory_is_refused(make_bundle: BundleFactory, tmp_path: Path) -> None:
    root = make_bundle({"a.cedar": POLICY})
    (tmp_path / "elsewhere").mkdir()
    (root / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleError, match="cannot be used") as caught:
        read_bundle(root)
    assert "symbolic links" in caught.value.problems[0].message


def test_bundle_root_that_is_a_symlink_is_refused(
    make_bundle: BundleFactory, tmp_path: Path
) -> None:
    root = make_bundle({"a.cedar": POLICY})
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    with pytest.raises(UsageError, match="not a directory"):
        read_bundle(link)


def test_bundle_without_policies_is_refused(make_bundle: BundleFactory) -> None:
    root = make_bundle({"notes.md": "nothing here"})
    with pytest.raises(BundleError) as caught:
        read_bundle(root)
    assert "no *.cedar policy files" in caught.value.problems[0].message


def test_missing_bundle_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_bundle(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        read_bundle(tmp_path / "file")


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (None, "manifest.json is missing"),
        ({"version": "1", "author": "a"}, '"authored_at" must be a non-empty string'),
        ({**MANIFEST, "authored_at": "yesterday"}, "not an RFC 3339 time"),
        ({**MANIFEST, "authored_at": "2026-13-01T00:00:00Z"}, "not an RFC 3339 time"),
        ({**MANIFEST, "version": 3}, '"version" must be a non-empty string'),
    ],
)
def test_manifest_problems_are_named(
    make_bundle: BundleFactory, manifest: dict[str, object] | None, expected: str
) -> None:
    root = make_bundle({"a.cedar": POLICY}, manifest=manifest)
    with pytest.raises(BundleError) as caught:
        read_bundle(root)
    assert any(expected in p.message for p in caught.value.problems), caught.value.problems


def test_manifest_with_duplicate_keys_is_refused(make_bundle: BundleFactory) -> None:
    root = make_bundle({"a.cedar": POLICY}, manifest=None)
    (root / "manifest.json").write_text(
        '{"version": "1", "version": "2", "authored_at": "2026-01-01T00:00:00Z", "author": "a"}'
    )
    with pytest.raises(BundleError) as caught:
        read_bundle(root)
    assert "duplicate key 'version'" in caught.value.problems[0].message


def test_special_file_is_reported(make_bundle: BundleFactory) -> None:
    root = make_bundle({"a.cedar": POLICY})
    os.mkfifo(root / "pipe.cedar")
    with pytest.raises(BundleError) as caught:
        read_bundle(root)
    assert caught.value.problems[0].message == "not a regular file"
    assert str(caught.value.problems[0].file).endswith("pipe.cedar")


def test_file_names_are_posix_relative_paths(make_bundle: BundleFactory) -> None:
    root = make_bundle({"teams/finance/ü.cedar": POLICY})
    source = read_bundle(root)
    assert "teams/finance/ü.cedar" in {f.path for f in source.files}
    assert source.hash == independent_bundle_hash(root)
    document = json.loads(rfc8785.dumps({"files": {f.path: f.digest for f in source.files}}))
    assert "teams/finance/ü.cedar" in document["files"]
