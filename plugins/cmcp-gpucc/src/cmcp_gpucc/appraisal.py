"""The appraisal half of a GPU verification: the stapled RIMs (`gpu.rim.driver`,
`gpu.rim.vbios`), the report's measurements against them (`gpu.measurements`) and the
stapled OCSP responses (`gpu.revocation`).

A RIM counts only when its XML signature holds with a signer that chains to a pinned CoRIM
signing root at the claim's time (`cmcp_gpucc.rim.verify_rim`), it is a GPU RIM of the kind
it is stapled as, for the chip the device chain names, and its version is the one the GPU
signed. Measurements follow NVIDIA's rules: RIM index i is compared with SPDM block i+1,
only active indices count, an index active in both RIMs is a conflict, and index 35 (NVDEC0)
is left out when the signed opaque data says NVDEC0 is disabled.
"""

from __future__ import annotations

from typing import Final, Protocol

from cryptography import x509

from cmcp_cli.attestation.api import TrustInputs
from cmcp_cli.attestation.toolkit import CheckFailed as _Fail
from cmcp_cli.attestation.toolkit import CheckSkipped as _Skip
from cmcp_gpucc import certificates, opaque, policy, revocation, rim, roots, spdm, x509_rules
from cmcp_gpucc.evidence import DecodedEvidence

NVDEC0_INDEX: Final = 35  # the RIM index NVIDIA skips when NVDEC0 is disabled
KINDS: Final = {"driver": "driver", "vbios": "VBIOS"}


class VerificationState(Protocol):
    """What the appraisal reads of one verification (`cmcp_gpucc.verifier`)."""

    trust: TrustInputs
    wanted: policy.Requirements
    d: DecodedEvidence
    chain: certificates.DeviceChain | None
    chip: certificates.Chip | None

    def anchors(self) -> roots.TrustSet: ...

    def report(self) -> tuple[spdm.Exchange, opaque.OpaqueData]: ...


def _check_name(kind: str) -> str:
    return f"gpu.rim.{kind}"


class Appraiser:
    def __init__(self, state: VerificationState) -> None:
        self.state = state
        self.rims: dict[str, rim.Rim] = {}

    def _rim(self, kind: str) -> str:
        xml = self.state.d.rims.get(kind)
        label = KINDS[kind]
        if xml is None:
            raise _Skip(
                f"No {label} RIM is stapled, so the measurements cannot be appraised: give the "
                f"gateway NVIDIA's {label} RIM for this GPU (attestation.providers.gpu-cc rims)."
            )
        trust = self.state.anchors()
        try:
            verified = rim.verify_rim(xml, [a.cert for a in trust.rim], self.state.trust.at)
        except rim.RimError as error:
            raise _Fail(str(error)) from None
        if verified.kind != kind:
            raise _Fail(
                f"The RIM stapled as the {label} RIM is {verified.describe()}, not a GPU "
                f"{label} RIM."
            )
        _, data = self.state.report()
        signed = data.driver_version if kind == "driver" else data.vbios_version
        stated = verified.version if kind == "driver" else verified.version.upper()
        if stated != signed:
            raise _Fail(
                f"{verified.describe()} is for {label} {verified.version}, but the GPU signed "
                f"{label} {signed}."
            )
        chip = self.state.chip
        if chip is None:
            raise _Skip(
                f"{verified.describe()} verifies, but the GPU's chip is not known to compare "
                "its product with (see gpu.architecture)."
            )
        if verified.product != chip.name:
            raise _Fail(
                f"{verified.describe()} is for {verified.product}, not the GPU's {chip.name}."
            )
        self.rims[kind] = verified
        signer = x509_rules.describe(verified.signer_chain[0])
        return (
            f"{verified.describe()} for {chip.name}, signed by {signer} under "
            f"{x509_rules.describe(verified.signer_chain[-1])}, valid at "
            f"{self.state.trust.at.isoformat()}; its version is the one the GPU signed."
        )

    def rim_driver(self) -> str:
        return self._rim("driver")

    def rim_vbios(self) -> str:
        return self._rim("vbios")

    def measurements(self) -> str:
        exchange, data = self.state.report()
        missing = [_check_name(kind) for kind in KINDS if kind not in self.rims]
        if missing:
            raise _Skip(f"No verified RIM to compare with (see {', '.join(missing)}).")
        driver, vbios = self.rims["driver"], self.rims["vbios"]
        conflict = sorted({m.index for m in driver.active} & {m.index for m in vbios.active})
        if conflict:
            raise _Fail(
                f"RIM indices {', '.join(map(str, conflict))} are active in both the driver "
                "and the VBIOS RIM: which one holds is ambiguous."
            )
        blocks = exchange.digests()
        skipped = data.nvdec0_enabled is False
        problems = []
        for kind, document in (("driver", driver), ("vbios", vbios)):
            wrong = [
                i
                for i in rim.mismatching_indices(document, blocks)
                if not (skipped and i == NVDEC0_INDEX)
            ]
            if wrong:
                problems.append(
                    f"{KINDS[kind]} RIM index(es) {', '.join(map(str, wrong))} do not match "
                    "(block index + 1)"
                )
        if problems:
            raise _Fail("The measurements differ from the RIMs: " + "; ".join(problems) + ".")
        active = {m.index for m in (*driver.active, *vbios.active)}
        left_out = skipped and NVDEC0_INDEX in active
        compared = len(active) - left_out
        note = " (index 35 left out: the GPU signed that NVDEC0 is disabled)" if left_out else ""
        return (
            f"All {compared} active RIM indices match their measurement blocks{note}: the GPU "
            "runs the firmware and configuration NVIDIA published golden values for (what "
            "NVIDIA's verifiers report as secure boot on, debug disabled)."
        )

    def revocation(self) -> str:
        state = self.state
        if not state.d.ocsp:
            qualifier = (
                "the auditor's platform policy allows that"
                if state.wanted.allow_unchecked_revocation
                else "the GPU is not hardware-attested unless the auditor's platform "
                f"policy sets {policy.TABLE} allow_unchecked_revocation = true"
            )
            raise _Skip(
                "Not checked: no OCSP response is stapled, so whether NVIDIA revoked a "
                f"certificate of the device or RIM chains is unknown ({qualifier})."
            )
        if state.chain is None:
            raise _Skip("The device chain is not verified (see gpu.chain).")
        # NVIDIA's OCSP service does not cover the leaf, which the GPU's firmware makes.
        chains: list[tuple[x509.Certificate, ...]] = [state.chain.certs[1:]]
        chains.extend(document.signer_chain for document in self.rims.values())
        trust = state.anchors()
        anchors = [a.cert for a in (*trust.device, *trust.rim)]
        try:
            return revocation.check_stapled_ocsp(state.d.ocsp, chains, anchors, state.trust.at)
        except revocation.RevocationError as error:
            raise _Fail(str(error)) from None

    def pinned(self) -> str:
        pins = self.state.wanted.rim_measurements
        if pins is None:
            raise _Skip(
                f"No rim_measurements in the auditor's platform policy ({policy.TABLE} of "
                "--platform-policy): any driver and VBIOS RIM pair NVIDIA signed is accepted."
            )
        measured = self.measurement()
        if measured is None:
            missing = [_check_name(kind) for kind in KINDS if kind not in self.rims]
            raise _Skip(f"No verified RIM pair to compare (see {', '.join(missing)}).")
        if measured not in pins:
            driver, vbios = self.rims["driver"], self.rims["vbios"]
            raise _Fail(
                f"The RIM pair (driver {driver.version}, VBIOS {vbios.version}) measures "
                f"{measured}, which is not among the platform policy's {len(pins)} "
                "rim_measurements."
            )
        return f"The RIM pair measures {measured}, one of the platform policy's rim_measurements."

    def measurement(self) -> str | None:
        """The pinnable digest of the RIM pair (`cmcp measure gpu-cc`), once both verified."""
        if "driver" in self.rims and "vbios" in self.rims:
            return rim.rim_set_measurement(self.rims["driver"], self.rims["vbios"])
        return None
