"""What a certificate may do in a chain this plugin walks (a GPU's device chain, a RIM's
signer chain): an issuer must be a CA within its path length whose keyUsage (when stated)
allows keyCertSign; a signer must not be a CA, its keyUsage (when stated) must allow
digitalSignature, and its key must be ECDSA P-384 (`toolkit.p384_key_problem`), the key
type NVIDIA signs with. Each rule returns the problem as a sentence naming the certificate
by `label`, or None."""

from __future__ import annotations

from cryptography import x509

from cmcp_cli.attestation.toolkit import common_name


def describe(cert: x509.Certificate) -> str:
    """A certificate for people: its common name."""
    try:
        return common_name(cert)
    except ValueError:
        return "(unreadable subject)"


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def signer_problem(cert: x509.Certificate, label: str) -> str | None:
    """Why `cert` may not sign (it is a CA, or its keyUsage forbids signing), or None."""
    constraints, usage = basic_constraints(cert), key_usage(cert)
    if constraints is not None and constraints.ca:
        return f"{label} is a CA certificate, not a signing certificate."
    if usage is not None and not usage.digital_signature:
        return f"{label} has a keyUsage without digitalSignature: it may not sign."
    return None


def issuer_problem(issuer: x509.Certificate, label: str, below: int) -> str | None:
    """Why `issuer` may not issue a certificate that has `below` CA certificates under it
    down to the signer, or None when it may."""
    constraints, usage = basic_constraints(issuer), key_usage(issuer)
    if constraints is None or not constraints.ca:
        return f"{label} is not a CA certificate, so it may not issue certificates."
    if constraints.path_length is not None and below > constraints.path_length:
        return (
            f"{label} allows {constraints.path_length} CA certificate(s) below it, "
            f"and the chain has {below}."
        )
    if usage is not None and not usage.key_cert_sign:
        return f"{label} has a keyUsage without keyCertSign: it may not sign certificates."
    return None
