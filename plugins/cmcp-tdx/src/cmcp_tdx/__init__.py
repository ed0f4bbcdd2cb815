"""cmcp-tdx: Intel TDX attestation for the cMCP gateway.

The collector (`cmcp_tdx.collector`) gets a DCAP quote through configfs-tsm, or from
`/dev/tdx_guest` and the host's quote generation service; the verifier
(`cmcp_tdx.verifier`) and measurer (`cmcp_tdx.measurer`) use `cryptography` only, so an
auditor verifies claims offline on any machine.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-tdx")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
