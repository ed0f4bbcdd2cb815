"""cmcp-gpucc: NVIDIA GPU confidential computing attestation for the cMCP gateway.

GPUs are devices beside the CPU platform (`ProviderScope.DEVICE`). The collector
(`cmcp_gpucc.collector`) asks NVML for each GPU's SPDM measurement report over the session's
binding; the verifier (`cmcp_gpucc.verifier`) uses `cryptography` and `signxml` only, so an
auditor verifies the evidence offline on any machine; the measurer (`cmcp_gpucc.measurer`)
prints the golden values of a pair of RIMs.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-gpucc")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
