"""The reload rules as a library (which bundle may replace the running one) and as
validate-config sees them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cmcp_cli.config import PolicyReloadConfig
from cmcp_cli.policy.acceptance import (
    SIGNATURE_NAME,
    BundleRefusedError,
    accept,
    compare_versions,
    load_private_key,
    load_public_key,
    sign_bundle,
)
from cmcp_cli.policy.bundle import read_bundle
from cmcp_tpm.testing import SoftwareTpm
from tests.gateway_support import write_config
from tests.reload_support import quickstart_copy, rewrite, write_keys
from tests.support import run_cmcp


@pytest.mark.parametrize(
    ("new", "running", "order"),
    [("1.0.1", "1.0.0", 1), ("1.10.0", "1.9.0", 1), ("3", "12", -1), ("2.0", "2.0", 0)],
)
def test_versions_compare_part_by_part_as_numbers(new: str, running: str, order: int) -> None:
    assert compare_versions(new, running) == order


@pytest.mark.parametrize(
    ("new", "running", "why"),
    [
        ("1.1.0-rc1", "1.0.0", "cannot be ordered"),
        ("v2", "1", "cannot be ordered"),
        ("01.0.0", "1.0.0", "cannot be ordered"),
        ("1.1", "1.0.0", "different numbers of parts"),
        ("", "1", "cannot be ordered"),
    ],
)
def test_versions_that_cannot_be_ordered_are_refused(new: str, running: str, why: str) -> None:
    with pytest.raises(BundleRefusedError, match=why):
        compare_versions(new, running)


def test_a_signature_covers_the_bundle_hash_not_the_file_it_names(tmp_path: Path) -> None:
    private, public = write_keys(tmp_path, "k")
    bundle = rewrite(tmp_path / "b", version="1.1.0")
    rule = PolicyReloadConfig(signing_keys=(public,))
    keys = [load_public_key(public)]
    sign_bundle(read_bundle(bundle), load_private_key(private))
    accepted = accept(rule, read_bundle(bundle), "1.0.0", keys)
    assert accepted.rule == "signature"
    raw = public.read_bytes()
    der = serialization.load_pem_public_key(raw).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert accepted.detail == (
        f"signed by ed25519:{hashlib.sha256(der[-32:]).hexdigest()}, version 1.1.0"
    )
    # the signature file is hidden, so it is not part of what it signs
    assert read_bundle(bundle).hash == read_bundle(rewrite(tmp_path / "c", version="1.1.0")).hash
    # a policy changed after signing: the file still names the old hash, which is refused
    (bundle / "late.cedar").write_text("permit (principal, action, resource);")
    with pytest.raises(BundleRefusedError, match="but the directory hashes to"):
        accept(rule, read_bundle(bundle), "1.0.0", keys)
    # a file naming the new hash with the old signature does not verify
    signature = (bundle / SIGNATURE_NAME).read_text()
    old_hash = signature.split('"bundle_hash":"')[1].split('"')[0]
    forged = signature.replace(old_hash, read_bundle(bundle).hash)
    (bundle / SIGNATURE_NAME).write_text(forged)
    with pytest.raises(BundleRefusedError, match="not by any of"):
        accept(rule, read_bundle(bundle), "1.0.0", keys)


def test_no_rule_refuses_every_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleRefusedError, match="no reload rule"):
        accept(PolicyReloadConfig(), read_bundle(quickstart_copy(tmp_path / "b")), "0.1.0", [])


def _errors(config: Path) -> list[str]:
    checked = run_cmcp("validate-config", "--config", config, "--json", env={"CMCP_DEV_MODE": "1"})
    return [error["message"] for error in checked.json()["errors"]]


def test_validate_config_refuses_reload_settings_that_would_not_hold(tmp_path: Path) -> None:
    _, public = write_keys(tmp_path, "k")
    upstream = "http://127.0.0.1:9/mcp"
    without_rule = write_config(tmp_path, upstream, policy_reload_interval_seconds=5)
    (message,) = _errors(without_rule)
    assert "no rule says which bundles" in message
    grace_only = write_config(tmp_path, upstream, policy={"reload": {"grace_seconds": 5}})
    assert any("grace period without a reload rule" in m for m in _errors(grace_only))
    both = write_config(
        tmp_path,
        upstream,
        policy={"reload": {"signing_keys": [str(public)], "accept_hashes": ["sha256:" + "a" * 64]}},
    )
    assert any("not both" in m for m in _errors(both))
    not_a_key = write_config(
        tmp_path, upstream, policy={"reload": {"signing_keys": [str(tmp_path / "k.pem")]}}
    )
    assert any("not a PEM public key" in m for m in _errors(not_a_key))
    unordered = rewrite(tmp_path / "beta", version="1.0-beta")
    signed_unordered = write_config(
        tmp_path,
        upstream,
        policy_bundle_path=str(unordered),
        policy={"reload": {"signing_keys": [str(public)]}},
    )
    assert any("cannot be ordered" in m for m in _errors(signed_unordered))
    tpm = write_config(
        tmp_path,
        upstream,
        attestation={"provider": "tpm", "expected_measurement": "sha256:" + "b" * 64},
        policy={"reload": {"accept_hashes": ["sha256:" + "a" * 64]}},
    )
    assert any("expected_measurement would no longer hold" in m for m in _errors(tpm))
    typo = write_config(tmp_path, upstream, policy={"reload": {"accept_hash": []}})
    assert any("accept_hash" in m for m in _errors(typo))
    fine = write_config(
        tmp_path,
        upstream,
        policy_reload_interval_seconds=5,
        policy={"reload": {"signing_keys": [str(public)], "grace_seconds": 30}},
    )
    assert _errors(fine) == []


def test_start_refuses_reload_with_a_pinned_measurement_when_auto_chooses_the_tpm(
    tmp_path: Path,
) -> None:
    """The TPM's measurement covers the bundle: `auto` choosing it with a reload rule and a
    pinned measurement is refused before anything is served (validate-config cannot know
    auto's choice)."""
    with SoftwareTpm() as tpm:
        config = write_config(
            tmp_path,
            "http://127.0.0.1:9/mcp",
            attestation={
                "provider": "auto",
                "providers": {"tpm": {"tcti": tpm.tcti}},
                "expected_measurement": "sha256:" + "b" * 64,
            },
            policy={"reload": {"accept_hashes": ["sha256:" + "a" * 64]}},
        )
        started = run_cmcp("start", "--config", config, env={"CMCP_DEV_MODE": "1"})
    assert started.returncode != 0
    assert "`auto` chose the tpm provider" in started.stderr
    assert "expected_measurement would no longer hold" in started.stderr


def test_sign_bundle_signs_only_a_bundle_that_compiles(tmp_path: Path) -> None:
    private, public = write_keys(tmp_path, "k")
    broken = rewrite(tmp_path / "broken", version="1.1.0", extra="permit (principal, action")
    refused = run_cmcp("sign-bundle", "--bundle-path", broken, "--key", private)
    assert refused.returncode == 1
    assert "reload.cedar" in refused.stderr
    assert not (broken / SIGNATURE_NAME).exists()
    wrong_key = run_cmcp("sign-bundle", "--bundle-path", broken, "--key", public)
    assert wrong_key.returncode == 2
    assert "not an unencrypted PEM private key" in wrong_key.stderr
    good = rewrite(tmp_path / "good", version="1.1.0")
    signed = run_cmcp("sign-bundle", "--bundle-path", good, "--key", private)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.strip() == read_bundle(good).hash  # stdout: the hash alone
    assert (good / SIGNATURE_NAME).exists()


def test_a_signature_that_is_a_link_or_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    private, public = write_keys(tmp_path, "k")
    bundle = rewrite(tmp_path / "b", version="1.1.0")
    rule, keys = PolicyReloadConfig(signing_keys=(public,)), [load_public_key(public)]
    signature = sign_bundle(read_bundle(bundle), load_private_key(private))
    moved = signature.rename(tmp_path / "elsewhere.json")
    signature.symlink_to(moved)
    with pytest.raises(BundleRefusedError, match="cannot read"):
        accept(rule, read_bundle(bundle), "1.0.0", keys)
    signature.unlink()
    os.mkfifo(signature)  # no writer: an open that waits for one would hang here
    with pytest.raises(BundleRefusedError, match="not a regular file"):
        accept(rule, read_bundle(bundle), "1.0.0", keys)
