"""Which bundle may replace the running one (docs/policy.md, "Reloading a bundle").

Two rules, one of which the operator configures (`policy.reload`):

- pinned hashes: the new bundle's hash is one of `accept_hashes`;
- signatures: the bundle directory holds `SIGNATURE_NAME`, an Ed25519 signature by one of
  `signing_keys` over `signed_message(bundle hash)`, and its manifest version is higher
  than the running bundle's (`compare_versions`); an equal or lower one is a rollback.

The signature file is hidden (its name starts with a dot), so DESIGN §3 leaves it out of
the bundle hash: it travels with the directory it signs and cannot sign itself. What is
signed is the hash computed from the bytes read, never the hash the file names.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_cli.claim.keys import JWKError, b64url_decode, b64url_encode
from cmcp_cli.config import PolicyReloadConfig
from cmcp_cli.errors import CmcpError, UsageError
from cmcp_cli.policy.bundle import BundleSource, read_bundle
from cmcp_cli.policy.engine import compile_bundle
from cmcp_cli.strict_json import StrictJSONError, loads_strict

SIGNATURE_NAME = ".cmcp-bundle-signature.json"
SIGNATURE_FORMAT = 1
MAX_SIGNATURE_BYTES = 4096
_VERSION = re.compile(r"(0|[1-9][0-9]{0,17})(\.(0|[1-9][0-9]{0,17}))*")


class BundleRefusedError(CmcpError):
    """A bundle that the operator's rule does not let replace the running one."""


def signed_message(bundle_hash: str) -> bytes:
    """The bytes a bundle signature covers: RFC 8785 of a tagged object, so a signature
    made for anything else (a claim, another format) can never pass for one."""
    return canonical_bytes({"cmcp_bundle_signature": SIGNATURE_FORMAT, "bundle_hash": bundle_hash})


def compare_versions(new: str, running: str) -> int:
    """-1, 0 or 1 as manifest version `new` is below, equal to or above `running`.

    A comparable version is an integer (`7`) or dot-separated integers without leading
    zeros (`1.4.0`); two versions compare only with the same number of parts, part by
    part as numbers. Anything else (`1.4.0-rc1`, `v2`, `1.4` against `1.4.0`) cannot be
    ordered and raises `BundleRefusedError`: a rule that must refuse rollbacks cannot guess."""
    for version in (new, running):
        if _VERSION.fullmatch(version) is None:
            raise BundleRefusedError(
                f"manifest version {version!r} cannot be ordered",
                hint="write the version as an integer or as dot-separated integers (1.4.0)",
            )
    left = tuple(int(part) for part in new.split("."))
    right = tuple(int(part) for part in running.split("."))
    if len(left) != len(right):
        raise BundleRefusedError(
            f"manifest versions {new!r} and {running!r} have different numbers of parts",
            hint="keep one version scheme: as many dot-separated parts as the running bundle's",
        )
    return (left > right) - (left < right)


def key_id(key: Ed25519PublicKey) -> str:
    """How a signing key is named in logs and audit entries: `ed25519:` + the SHA-256 of
    its 32 raw bytes (`openssl pkey -pubin -in KEY.pub.pem -outform DER | tail -c 32 |
    sha256sum` gives the same hex)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM Ed25519 public key (`openssl pkey -pubout`); `UsageError` otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read bundle signing key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise UsageError(
            f"{path} is not a PEM public key",
            hint="export it with: openssl pkey -in signing.pem -pubout -out signing.pub.pem",
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(
            f"{path} is not an Ed25519 public key",
            hint="bundle signatures are Ed25519: openssl genpkey -algorithm ed25519",
        )
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{path} is not an unencrypted PEM private key",
            hint="create one with: openssl genpkey -algorithm ed25519 -out signing.pem",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class SignedBundle:
    bundle_hash: str
    version: str
    signature_file: Path

    def to_json(self) -> dict[str, str]:
        return {
            "bundle_hash": self.bundle_hash,
            "version": self.version,
            "signature_file": str(self.signature_file),
        }


def sign_bundle_at(bundle_path: Path, key_path: Path) -> SignedBundle:
    """Read and compile the bundle at `bundle_path` (a bundle that does not compile is
    not signed), then sign its hash with the PEM Ed25519 private key at `key_path`."""
    private_key = load_private_key(key_path)
    source = read_bundle(bundle_path)
    compile_bundle(source)
    path = sign_bundle(source, private_key)
    return SignedBundle(source.hash, source.manifest.version, path)


def sign_bundle(source: BundleSource, private_key: Ed25519PrivateKey) -> Path:
    """Write the bundle's signature file into its directory; return its path."""
    signature = private_key.sign(signed_message(source.hash))
    document = {
        "cmcp_bundle_signature": SIGNATURE_FORMAT,
        "algorithm": "Ed25519",
        "bundle_hash": source.hash,
        "signature": b64url_encode(signature),
    }
    path = source.root / SIGNATURE_NAME
    path.write_bytes(canonical_bytes(document) + b"\n")
    return path


@dataclass(frozen=True)
class Acceptance:
    """Why a bundle was let in: the rule that matched."""

    rule: str  # "pinned-hash" or "signature"
    detail: str


def accept(
    rule: PolicyReloadConfig,
    candidate: BundleSource,
    running_version: str,
    keys: Sequence[Ed25519PublicKey],
) -> Acceptance:
    """Whether `candidate` may replace a running bundle of `running_version`, by the
    operator's rule; `BundleRefusedError` naming the reason otherwise. No rule refuses all."""
    if rule.accept_hashes:
        if candidate.hash not in rule.accept_hashes:
            raise BundleRefusedError(
                f"bundle {candidate.hash} is not one of policy.reload.accept_hashes",
                hint="pin its hash (cmcp validate-bundle prints it) and restart, if intended",
            )
        return Acceptance("pinned-hash", f"{candidate.hash} is pinned")
    if rule.signing_keys:
        signer = _verify_signature(candidate, keys)
        version = candidate.manifest.version
        if compare_versions(version, running_version) <= 0:
            raise BundleRefusedError(
                f"manifest version {version} is not above the running {running_version}: "
                "a rollback or a re-release under the same version",
                hint="give the new bundle a higher manifest.json version and sign it again",
            )
        return Acceptance("signature", f"signed by {key_id(keys[signer])}, version {version}")
    raise BundleRefusedError(
        "no reload rule is configured (policy.reload)",
        hint="set policy.reload.accept_hashes or policy.reload.signing_keys",
    )


def _verify_signature(candidate: BundleSource, keys: Sequence[Ed25519PublicKey]) -> int:
    """The index of the configured key whose signature the bundle carries."""
    path = candidate.root / SIGNATURE_NAME
    try:
        # Not following a link, not waiting on a FIFO: whoever can write the directory
        # must not be able to stall the reload thread.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise BundleRefusedError(f"{path} is not a regular file")
            data = handle.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        raise BundleRefusedError(
            f"the bundle is not signed ({path} is missing)",
            hint=f"sign it: cmcp sign-bundle --bundle-path {candidate.root} --key KEY.pem",
        ) from None
    except OSError as exc:
        raise BundleRefusedError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SIGNATURE_BYTES:
        raise BundleRefusedError(f"{path} is larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        document = loads_strict(data)
    except StrictJSONError as exc:
        raise BundleRefusedError(f"{path} is not valid JSON: {exc}") from exc
    tagged = document.get("cmcp_bundle_signature") if isinstance(document, dict) else None
    if type(tagged) is not int or tagged != SIGNATURE_FORMAT or not isinstance(document, dict):
        raise BundleRefusedError(
            f"{path} is not a cMCP bundle signature (format {SIGNATURE_FORMAT})"
        )
    if document.get("bundle_hash") != candidate.hash:
        raise BundleRefusedError(
            f"{path} signs bundle {document.get('bundle_hash')!r}, "
            f"but the directory hashes to {candidate.hash}",
            hint="the bundle changed after signing: sign it again",
        )
    try:
        signature = b64url_decode(str(document.get("signature")))
    except JWKError as exc:
        raise BundleRefusedError(f"{path}: signature is {exc}") from exc
    message = signed_message(candidate.hash)
    for index, key in enumerate(keys):
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return index
    raise BundleRefusedError(
        f"the signature in {path} is not by any of policy.reload.signing_keys",
        hint="sign the bundle with a configured key, or configure its public key",
    )
