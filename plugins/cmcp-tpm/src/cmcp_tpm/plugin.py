"""The provider declaration that `cmcp` finds through the entry point `cmcp = tpm`.

Nothing here imports the collector, the verifier or the measurer: each is loaded only when
used, so listing plugins on an auditor's machine never touches tpm2-pytss. Without a
usable tpm2-pytss the collector does not load: its loader raises `ProviderError` with the
install hint, and the host reports the provider as unavailable.
"""

from __future__ import annotations

from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.hookspecs import provide

NAME = "tpm"
PLATFORM = "tpm2"
EVIDENCE_TYPE = "tpm2-quote-v1"


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    collector="cmcp_tpm.collector:TpmCollector",
    verifier="cmcp_tpm.verifier:TpmVerifier",
    measurer="cmcp_tpm.measurer:TpmMeasurer",
    description="TPM 2.0 quote over the PCR holding the policy bundle hash",
)

cmcp_attestation_providers = provide(SPEC)
