"""`trace.anchor`'s files: the log key receipts must verify under, and the CA bundle."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import Problem
from cmcp_cli.gateway.preflight.checks import Locator

_LOG_KEY_HINT = (
    "set trace.anchor.log_key to the transparency service's public key as PEM (Ed25519, "
    "P-256 or P-384), as the service publishes it"
)
_CURVES = (ec.SECP256R1, ec.SECP384R1)


def log_key_problem(path: Path) -> str | None:
    """Why `path` is not a log key receipts can verify under; None when it is one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        return f"{path} is not a PEM public key"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return None
    return f"{path} is a {type(key).__name__}, not an Ed25519, P-256 or P-384 key"


def ca_file_problem(path: Path) -> str | None:
    """Why `path` cannot be the CA bundle TLS to the service is verified against."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        x509.load_pem_x509_certificates(data)
        ssl.create_default_context(cafile=str(path))
    except (ValueError, ssl.SSLError) as exc:
        return f"{path} holds no usable PEM CA certificate ({exc})"
    return None


def check_anchor(config: CmcpConfig, at: Locator) -> list[Problem]:
    anchor = config.trace.anchor
    if anchor is None:
        return []
    problems: list[Problem] = []
    problem = log_key_problem(anchor.log_key)
    if problem is not None:
        problems.append(at.error(("trace", "anchor", "log_key"), problem, _LOG_KEY_HINT))
    if anchor.ca_file is not None:
        problem = ca_file_problem(anchor.ca_file)
        if problem is not None:
            problems.append(
                at.error(
                    ("trace", "anchor", "ca_file"),
                    problem,
                    "set trace.anchor.ca_file to the PEM CA certificate(s) the service's TLS "
                    "certificate chains to, or remove it to use the system roots",
                )
            )
    return problems
