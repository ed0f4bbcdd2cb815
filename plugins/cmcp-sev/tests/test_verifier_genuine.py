"""The genuine SEV-SNP vectors from the shared attestation vectors, judged offline exactly
as their MANIFEST.md states: the Milan report verifies with its VCEK and the vendored Milan
ASK/ARK, its DEBUG policy fails by default, and each kind of tampering fails the check
that names it; the auditor's minimums pass or fail naming what was compared."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import CheckStatus, ProviderError, TrustInputs
from cmcp_cli.attestation.toolkit import validity_problem
from cmcp_cli.testing.verdicts import assert_fails, reason, statuses
from cmcp_sev import certificates as certs
from cmcp_sev import roots
from cmcp_sev.structures import SIGNED_SIZE, Product
from cmcp_sev.verifier import GUEST_POLICY, HARDWARE_CHECKS, TCB_MINIMUM, SevVerifier

AT = datetime(2025, 6, 1, tzinfo=UTC)  # inside the Milan VCEK's 2022-09-24..2029-09-24
BINDING = bytes.fromhex("0102030405") + bytes(27)  # what the report's REPORT_DATA carries
MEASUREMENT = (
    "sha384:b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a6"
    "08eb0cf2e4872b01"
)
ALL_CHECKS = (
    "sev.evidence.shape", "sev.report.version", "sev.product", "sev.vcek.chain",
    "sev.ark.pinned", "sev.ask.revocation", "sev.report.signature", "sev.vcek.tcb",
    "sev.vcek.chip_id",
    "sev.report_data", "sev.policy.debug", "sev.tcb.minimum", "sev.policy.guest",
)  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def milan(vectors: Path, **changes: Any) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "report": _b64((vectors / "gosev-milan-report.bin").read_bytes()),
        "signing_key": "vcek",
        "vcek": _b64((vectors / "gosev-milan-vcek.der").read_bytes()),
    }
    evidence.update(changes)
    return {k: v for k, v in evidence.items() if v is not None}


def trust(**changes: Any) -> TrustInputs:
    values: dict[str, Any] = {"binding": BINDING, "at": AT, **changes}
    return TrustInputs(**values)


def test_milan_report_verifies_but_debug_fails_by_default(vectors: Path) -> None:
    verdict = SevVerifier().verify(milan(vectors), trust())
    assert tuple(c.name for c in verdict.checks) == ALL_CHECKS
    status = statuses(verdict)
    for name in HARDWARE_CHECKS:
        if name != "sev.policy.debug":
            assert status[name] is CheckStatus.PASS, (name, reason(verdict, name))
    assert_fails(verdict, "sev.policy.debug", "DEBUG", "bit 19")
    assert verdict.measurement == MEASUREMENT
    assert "ARK-Milan" in reason(verdict, "sev.ark.pinned")
    assert roots.PINNED_ARKS[Product.MILAN] in reason(verdict, "sev.ark.pinned")


def test_milan_report_is_hardware_attested_when_debug_is_allowed(vectors: Path) -> None:
    verdict = SevVerifier().verify(milan(vectors), trust(allow_debug=True))
    assert not verdict.failed, verdict.checks
    assert verdict.hardware_attested
    assert "auditor allows debug" in reason(verdict, "sev.policy.debug")


def test_the_verdict_states_the_launch_measurement_the_host_pins(vectors: Path) -> None:
    # Pinning is the host's `measurement` check (tests/test_confidential_vm_claims.py): the
    # verifier states the report's MEASUREMENT, whatever the pins.
    for pins in ((), (MEASUREMENT,), ("sha384:" + "0" * 96,)):
        verdict = SevVerifier().verify(
            milan(vectors), trust(allow_debug=True, expected_measurements=pins)
        )
        assert verdict.measurement == MEASUREMENT
        assert verdict.hardware_attested


def test_report_data_mismatch_fails(vectors: Path) -> None:
    # The vendor's report did not bind our key: any real binding is refused.
    verdict = SevVerifier().verify(
        milan(vectors), trust(binding=bytes(range(32)), allow_debug=True)
    )
    assert_fails(verdict, "sev.report_data", "not the session binding")
    assert statuses(verdict)["sev.report.signature"] is CheckStatus.PASS


def test_every_byte_flip_in_the_signed_region_fails_the_signature(vectors: Path) -> None:
    raw = (vectors / "gosev-milan-report.bin").read_bytes()
    verifier = SevVerifier()
    for offset in range(SIGNED_SIZE):
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        verdict = verifier.verify(
            milan(vectors, report=_b64(bytes(flipped))), trust(allow_debug=True)
        )
        assert statuses(verdict)["sev.report.signature"] is CheckStatus.FAIL, offset
        assert not verdict.hardware_attested


def test_a_wrong_root_fails_the_pin(vectors: Path) -> None:
    genoa = (vectors / "amd-ask-ark-genoa.pem").read_bytes()
    verdict = SevVerifier().verify(milan(vectors), trust(trust_roots=(genoa,), allow_debug=True))
    assert_fails(
        verdict, "sev.ark.pinned", "SEV-Milan was not issued by a pinned root", "ARK-Genoa"
    )
    # The host's own (unpinned) ARK is named by fingerprint when it is supplied.
    ask, ark = roots.load_pem((vectors / "amd-ask-ark-milan.pem").read_bytes())
    chain = [_b64(c.public_bytes(Encoding.DER)) for c in (ask, ark)]
    supplied = SevVerifier().verify(
        milan(vectors, cert_chain=chain), trust(trust_roots=(genoa,), allow_debug=True)
    )
    assert_fails(supplied, "sev.ark.pinned", roots.PINNED_ARKS[Product.MILAN], "not pinned")


def test_the_milan_root_given_as_a_trust_root_is_accepted(vectors: Path) -> None:
    pem = (vectors / "amd-ask-ark-milan.pem").read_bytes()
    verdict = SevVerifier().verify(milan(vectors), trust(trust_roots=(pem,), allow_debug=True))
    assert verdict.hardware_attested, verdict.checks
    # the very bytes of the vendored ARK, but given by the auditor: named as theirs
    said = reason(verdict, "sev.ark.pinned")
    assert "the root given with --trust-root, ARK-Milan" in said and "vendored" not in said
    vendored = SevVerifier().verify(milan(vectors), trust(allow_debug=True))
    assert "the vendored AMD root ARK-Milan" in reason(vendored, "sev.ark.pinned")


@pytest.mark.parametrize("position", [0, 1])
def test_an_altered_certificate_in_the_hosts_chain_fails(vectors: Path, position: int) -> None:
    """A certificate the host supplied is evidence: altered, it is refused, not passed over
    for the vendored copy."""
    chain = [
        _b64(c.public_bytes(Encoding.DER))
        for c in roots.load_pem((vectors / "amd-ask-ark-milan.pem").read_bytes())
    ]
    genuine = SevVerifier().verify(milan(vectors, cert_chain=chain), trust(allow_debug=True))
    assert genuine.hardware_attested, genuine.checks
    der = bytearray(base64.b64decode(chain[position]))
    der[-1] ^= 0x01  # the last byte of its signature
    chain[position] = _b64(bytes(der))
    verdict = SevVerifier().verify(milan(vectors, cert_chain=chain), trust(allow_debug=True))
    # an altered ASK still signs the VCEK (its key is intact), but AMD's ARK did not sign it;
    # an altered ARK is on no path at all
    fragment = "not issued by a pinned root" if position == 0 else "cert_chain[1]"
    assert_fails(verdict, "sev.ark.pinned", fragment)


def test_a_swapped_vcek_fails_the_signature(vectors: Path) -> None:
    turin = _b64((vectors / "virtee-turin-vcek.der").read_bytes())
    verdict = SevVerifier().verify(milan(vectors, vcek=turin), trust(allow_debug=True))
    assert_fails(verdict, "sev.report.signature", "does not verify")
    assert statuses(verdict)["sev.vcek.chip_id"] is not CheckStatus.PASS


def test_a_time_after_the_vceks_not_after_fails_the_chain(vectors: Path) -> None:
    later = datetime(2029, 9, 25, tzinfo=UTC)
    verdict = SevVerifier().verify(milan(vectors), trust(at=later, allow_debug=True))
    assert_fails(verdict, "sev.vcek.chain", "expired at 2029-09-24")
    early = SevVerifier().verify(milan(vectors), trust(at=datetime(2022, 1, 1, tzinfo=UTC)))
    assert_fails(early, "sev.vcek.chain", "not valid until")


def test_a_missing_vcek_says_where_to_get_it(vectors: Path) -> None:
    verdict = SevVerifier().verify(milan(vectors, vcek=None), trust(allow_debug=True))
    assert_fails(
        verdict, "sev.vcek.chain", "No VCEK was supplied",
        "https://kdsintf.amd.com/vcek/v1/<product>/",
    )  # fmt: skip
    named = SevVerifier().verify(milan(vectors, vcek=None, product="Milan"), trust())
    chip = (vectors / "gosev-milan-report.bin").read_bytes()[0x1A0:0x1E0].hex()
    assert_fails(
        named, "sev.vcek.chain",
        f"https://kdsintf.amd.com/vcek/v1/Milan/{chip}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68",
    )  # fmt: skip
    assert statuses(named)["sev.report.signature"] is CheckStatus.SKIP


def test_a_product_claim_that_contradicts_the_vcek_fails(vectors: Path) -> None:
    verdict = SevVerifier().verify(milan(vectors, product="Genoa"), trust(allow_debug=True))
    assert_fails(verdict, "sev.product", "Genoa", "Milan")


def test_turin_vcek_chains_to_the_vendored_turin_roots_and_its_extensions_parse(
    vectors: Path,
) -> None:
    vcek = roots.load_der((vectors / "virtee-turin-vcek.der").read_bytes())
    assert certs.describe_issuer(vcek) == "SEV-Turin"
    trusted = roots.vendored()
    ask = certs.find_issuer(vcek, trusted.intermediates)
    assert ask is not None and roots.fingerprint(ask) == roots.PINNED_ASKS[Product.TURIN]
    ark = certs.find_issuer(ask, tuple(a.cert for a in trusted.anchors))
    assert ark is not None and roots.fingerprint(ark) == roots.PINNED_ARKS[Product.TURIN]
    assert certs.signature_problem(ark, ark, "ARK") is None
    for cert, label in ((vcek, "VCEK"), (ask, "ASK"), (ark, "ARK")):
        assert validity_problem(cert, label, datetime(2026, 1, 1, tzinfo=UTC)) is None
    extensions = certs.amd_extensions(vcek)
    assert extensions.spl == {"bl": 0, "tee": 0, "snp": 0, "ucode": 9, "fmc": 0}
    assert extensions.hwid is not None and len(extensions.hwid) == 8
    assert extensions.product_name == "Turin"
    # The Milan VCEK's hwID is the 64-byte CHIP_ID.
    milan_vcek = roots.load_der((vectors / "gosev-milan-vcek.der").read_bytes())
    milan_ext = certs.amd_extensions(milan_vcek)
    assert milan_ext.product_name == "Milan-B0" and milan_ext.hwid is not None
    assert len(milan_ext.hwid) == 64


def test_vendored_roots_are_the_shared_copies_and_match_the_pins(vectors: Path) -> None:
    for product in Product:
        shared = (vectors / f"amd-ask-ark-{product.value.lower()}.pem").read_bytes()
        assert roots.vendored_bytes(product) == shared
    vendored = roots.vendored()
    assert {a.fingerprint for a in vendored.anchors} == set(roots.PINNED_ARKS.values())
    assert {roots.fingerprint(c) for c in vendored.intermediates} == set(roots.PINNED_ASKS.values())


# The auditor's [sev-snp] platform policy against the Milan report: REPORTED_TCB =
# CURRENT_TCB bl=2 tee=0 snp=5 ucode=68, firmware 1.49.3, guest policy ABI 0.0, GUEST_SVN 0,
# SMT and DEBUG set.
MET_TCB = {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}


def judge(vectors: Path, **policy: Any) -> Any:
    return SevVerifier().verify(milan(vectors), trust(allow_debug=True, platform_policy=policy))


def test_without_a_policy_both_checks_skip_and_say_what_was_not_appraised(
    vectors: Path,
) -> None:
    verdict = judge(vectors)
    assert statuses(verdict)[TCB_MINIMUM] is CheckStatus.SKIP
    assert "was not appraised" in reason(verdict, TCB_MINIMUM)
    assert "--platform-policy" in reason(verdict, TCB_MINIMUM)
    assert statuses(verdict)[GUEST_POLICY] is CheckStatus.SKIP
    assert verdict.hardware_attested


def test_minimums_the_platform_meets_pass_with_what_was_compared(vectors: Path) -> None:
    verdict = judge(
        vectors,
        minimum_tcb=MET_TCB,
        minimum_firmware="1.49",
        minimum_abi="0.0",
        minimum_guest_svn=0,
        forbidden_policy_flags=["MIGRATE_MA"],
    )
    assert not verdict.failed, verdict.checks
    assert verdict.hardware_attested
    assert "REPORTED_TCB bl=2 tee=0 snp=5 ucode=68" in reason(verdict, TCB_MINIMUM)
    assert "firmware 1.49.3 >= 1.49.0" in reason(verdict, TCB_MINIMUM)
    assert "none of MIGRATE_MA is set" in reason(verdict, GUEST_POLICY)


@pytest.mark.parametrize(
    ("component", "level", "shortfall"),
    [
        ("microcode", 69, "microcode 68 < 69"),
        ("snp", 8, "snp 5 < 8"),
        ("bootloader", 3, "bootloader 2 < 3"),
    ],
)
def test_each_tcb_component_below_its_minimum_fails(
    vectors: Path, component: str, level: int, shortfall: str
) -> None:
    verdict = judge(vectors, minimum_tcb={**MET_TCB, component: level})
    assert_fails(verdict, TCB_MINIMUM, "REPORTED_TCB " + shortfall, "CURRENT_TCB " + shortfall)
    assert not verdict.hardware_attested


def test_older_firmware_than_the_minimum_fails(vectors: Path) -> None:
    assert_fails(judge(vectors, minimum_firmware="1.49.4"), TCB_MINIMUM, "1.49.3", "1.49.4")
    assert_fails(judge(vectors, minimum_firmware="1.55"), TCB_MINIMUM, "older than")


def test_fmc_on_a_milan_cannot_be_judged(vectors: Path) -> None:
    assert_fails(judge(vectors, minimum_tcb={"fmc": 1}), TCB_MINIMUM, "Turin", "Milan")


def test_guest_requirements_missed_fail_each_named(vectors: Path) -> None:
    verdict = judge(
        vectors, minimum_abi="1.51", minimum_guest_svn=1, forbidden_policy_flags=["SMT", "DEBUG"]
    )
    assert_fails(
        verdict,
        GUEST_POLICY,
        "ABI 0.0, below the minimum 1.51",
        "GUEST_SVN 0 is below the minimum 1",
        "forbidden SMT, DEBUG",
    )


def test_an_id_key_digest_pin_fails_a_launch_without_that_id_block(vectors: Path) -> None:
    # this report's launch had no ID block: its ID_KEY_DIGEST is zero, which no pin matches
    verdict = judge(vectors, id_key_digests=["5a" * 48])
    assert_fails(verdict, GUEST_POLICY, "ID_KEY_DIGEST 0000000000000000… is not one of the 1")
    assert not verdict.hardware_attested


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"minimum_tcb": {"ucode": 1}}, "not a TCB component"),
        ({"minimum_tcb": {"snp": 256}}, "from 0 to 255"),
        ({"minimum_tcb": {"snp": True}}, "from 0 to 255"),
        ({"minimum_tcb": {}}, "table of security patch levels"),
        ({"minimum_firmware": "1"}, "major.minor"),
        ({"minimum_firmware": 1.55}, "major.minor"),
        ({"minimum_abi": "1.51.2"}, '"major.minor"'),
        ({"minimum_guest_svn": -1}, "from 0 to"),
        ({"forbidden_policy_flags": ["SMTP"]}, "not a guest policy flag"),
        ({"forbidden_policy_flags": "SMT"}, "list of names"),
        ({"id_key_digests": "ab" * 48}, "list of SHA-384 digests"),
        ({"id_key_digests": ["AB" * 48]}, "96 lowercase hex"),
        ({"id_key_digests": ["00" * 48]}, "all-zero digest"),
        ({"id_key_digests": []}, "id_key_digests is empty"),
        ({"minimum_tbc": {}}, "minimum_tbc"),
    ],
)
def test_unusable_values_are_refused_naming_the_key(
    vectors: Path, policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProviderError, match=message) as refused:
        judge(vectors, **policy)
    assert refused.value.hint, refused.value.message  # every refusal names its fix
