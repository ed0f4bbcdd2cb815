"""`cmcp sign-bundle`: sign a policy bundle so that a gateway may reload it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmcp_cli.cli import render
from cmcp_cli.cli.options import JsonFlag
from cmcp_cli.cli.validate import BundlePath
from cmcp_cli.errors import ExitCode
from cmcp_cli.policy.acceptance import sign_bundle_at

SigningKey = Annotated[
    Path,
    typer.Option("--key", help="PEM Ed25519 private key (openssl genpkey -algorithm ed25519)."),
]


def sign_bundle_command(bundle_path: BundlePath, key: SigningKey, as_json: JsonFlag = False) -> int:
    """Compile the bundle and write its Ed25519 signature into it (a hidden file, outside
    the bundle hash), for gateways whose policy.reload.signing_keys hold the public key."""
    signed = sign_bundle_at(bundle_path, key)
    if as_json:
        render.emit_json(signed.to_json())
    else:
        render.err.print(f"signed bundle version {signed.version}: {signed.signature_file}")
        render.emit_line(signed.bundle_hash)
    return int(ExitCode.OK)
