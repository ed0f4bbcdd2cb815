"""`trace.anchor`'s files: the log key receipts must verify under, and the CA bundle."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from cmcp_cli.claim.receipt import log_key_problem as receipt_key_problem
from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import Problem
from cmcp_cli.gateway.preflight.checks import Locator

_LOG_KEY_HINT = (
    "set trace.anchor.log_key to the transparency service's public key as PEM (Ed25519, "
    "P-256 or P-384), as the service publishes it"
)


def log_key_problem(path: Path) -> str | None:
    """Why the file at `path` is not a log key receipts can verify under; None when it is."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    problem = receipt_key_problem(data)
    return None if problem is None else f"{path} is {problem}"


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
