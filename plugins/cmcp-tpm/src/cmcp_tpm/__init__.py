"""cmcp-tpm: TPM 2.0 attestation for the cMCP gateway.

The collector (`cmcp_tpm.collector`, needs tpm2-pytss and libtss2) runs on the TPM host;
the verifier (`cmcp_tpm.verifier`) and measurer (`cmcp_tpm.measurer`) use `cryptography`
only, so an auditor verifies claims without any TPM software installed.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-tpm")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
