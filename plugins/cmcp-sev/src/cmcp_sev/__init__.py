"""cmcp-sev: AMD SEV-SNP attestation for the cMCP gateway.

The collector (`cmcp_sev.collector`) runs inside an SEV-SNP guest and asks the firmware for
a report through configfs-tsm or /dev/sev-guest; the verifier (`cmcp_sev.verifier`) uses
`cryptography` only, so an auditor verifies claims offline on any machine; the measurer
(`cmcp_sev.measurer`) computes the expected launch digest with sev-snp-measure (the
`measure` extra).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-sev")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
