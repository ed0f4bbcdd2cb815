"""Bundles, keys and waits for the policy reload tests: a served gateway whose bundle
directory the tests rewrite, and the operator's view of what it runs."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.gateway_support import Served, request
from tests.support import QUICKSTART, run_cmcp

WAIT_SECONDS = 20.0
# A policy that the quickstart bundle does not have: it denies a call the quickstart allows.
NO_WEATHER = """
@id("no-weather")
forbid (principal, action == Action::"call_tool", resource == Tool::"get_weather");
"""


def write_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair as PEM files: (private, public)."""
    key = Ed25519PrivateKey.generate()
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def quickstart_copy(target: Path) -> Path:
    """The quickstart bundle (version 1.0.0) at `target`, without any signature."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(QUICKSTART / "policies", target)
    return target


def rewrite(bundle: Path, *, version: str, extra: str | None = NO_WEATHER) -> Path:
    """Replace the bundle in `bundle` by the quickstart's at `version`, with `extra` as a
    further policy file; any old signature goes."""
    quickstart_copy(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = version
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    if extra is not None:
        (bundle / "reload.cedar").write_text(extra)
    return bundle


def sign(bundle: Path, key: Path) -> str:
    """Sign through the CLI, as an operator does; the bundle hash it prints."""
    signed = run_cmcp("sign-bundle", "--bundle-path", bundle, "--key", key, "--json")
    assert signed.returncode == 0, signed.stderr
    return str(signed.json()["bundle_hash"])


def bundle_hash(bundle: Path) -> str:
    checked = run_cmcp("validate-bundle", "--bundle-path", bundle, "--json")
    assert checked.returncode == 0, checked.stderr
    return str(checked.json()["bundle_hash"])


def policy_status(served: Served) -> dict[str, Any]:
    status, _, body = request(served.port, "GET", "/readyz")
    assert status == 200, body
    return dict(json.loads(body)["policy"])


def wait_for(served: Served, condition: Any, what: str) -> dict[str, Any]:
    """Poll /readyz (bounded) until `condition(policy status)` holds."""
    deadline = time.monotonic() + WAIT_SECONDS
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = policy_status(served)
        if condition(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{what} within {WAIT_SECONDS} s; /readyz policy: {seen}")


def hang_up(served: Served) -> None:
    served.process.send_signal(signal.SIGHUP)


def reload_by_signal(served: Served) -> dict[str, Any]:
    """SIGHUP, then the next reload event (taken or refused) as /readyz shows it."""
    before = policy_status(served)["reload"]
    count = before["taken"] + before["refused"]
    hang_up(served)
    status = wait_for(
        served,
        lambda s: s["reload"]["taken"] + s["reload"]["refused"] > count,
        "the gateway did not report a reload event after SIGHUP",
    )
    return dict(status["reload"]["last"])


def metric(served: Served, name: str) -> dict[str, float]:
    """Every sample of metric `name` from /metrics, by its label text ('' for none)."""
    status, _, body = request(served.port, "GET", "/metrics")
    assert status == 200, body
    samples = {}
    for line in body.decode().splitlines():
        match = re.fullmatch(rf"{name}(\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)", line)
        if match:
            samples[match.group("labels") or ""] = float(match.group("value"))
    return samples


def claims(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((folder / "claims").glob("*.claim.json"))]
