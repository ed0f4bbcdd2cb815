"""cmcp-opaque: OPAQUE attestation tokens for the cMCP gateway.

The collector (`cmcp_opaque.collector`) asks an OPAQUE token service, over https only, for a
token whose nonce is the session binding; the verifier (`cmcp_opaque.verifier`) checks that
token offline against the keys the auditor pins. The token is a third party's appraisal: the
claim's platform stays `software-only` and it is never hardware-attested.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-opaque")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
