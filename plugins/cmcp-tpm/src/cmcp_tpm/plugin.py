"""The provider declaration that `cmcp` finds through the entry point `cmcp = tpm`.

Nothing here imports the collector, the verifier or the measurer: each is loaded only when
used, so listing plugins on an auditor's machine never touches tpm2-pytss. Without a
usable tpm2-pytss the collector does not load: its loader raises `ProviderError` with the
install hint, and the host reports the provider as unavailable.
"""

from __future__ import annotations

from collections.abc import Sequence

from cmcp_cli.attestation.api import Collector, Measurer, ProviderSpec, Verifier
from cmcp_cli.attestation.hookspecs import hookimpl

NAME = "tpm"
PLATFORM = "tpm2"
EVIDENCE_TYPE = "tpm2-quote-v1"


def _collector() -> Collector:
    from cmcp_tpm import tpm_access  # noqa: PLC0415 - loaded on demand

    tpm_access.require_tss()
    from cmcp_tpm.collector import TpmCollector  # noqa: PLC0415 - needs tpm2-pytss

    return TpmCollector()


def _verifier() -> Verifier:
    from cmcp_tpm.verifier import TpmVerifier  # noqa: PLC0415 - loaded on demand

    return TpmVerifier()


def _measurer() -> Measurer:
    from cmcp_tpm.measurer import TpmMeasurer  # noqa: PLC0415 - loaded on demand

    return TpmMeasurer()


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    load_collector=_collector,
    load_verifier=_verifier,
    load_measurer=_measurer,
    description="TPM 2.0 quote over the PCR holding the policy bundle hash",
)


@hookimpl
def cmcp_attestation_providers() -> Sequence[ProviderSpec]:
    return [SPEC]
