"""cmcp-azure: Azure confidential VMs (SEV-SNP and TDX behind the paravisor) for cMCP.

On an Azure CVM the guest cannot ask the hardware for a report with data of its choosing:
the paravisor (HCL) puts an SNP report or a TD report in the vTPM's NV index 0x01400001,
whose REPORT_DATA is the SHA-256 of a runtime-data JSON carrying the vTPM's attestation key.
The formats are `cmcp_azure.hcl` and `cmcp_azure.runtime_data`; the collector
(`cmcp_azure.collector`, tpm2-pytss, the `collector` extra) binds a session through a quote
by that key and, where the paravisor takes it, through user data in the report itself; the
verifiers judge the hardware report with cmcp-sev's and cmcp-tdx's, and every link around
it here.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-azure")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
