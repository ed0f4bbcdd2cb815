"""The synthetic quote builder against the verifier: a quote of the test PKI passes every
check the verifier can judge without collateral, and each signed part, altered, fails the
check that covers it."""

from __future__ import annotations

import base64

import pytest

from cmcp_cli.attestation.api import CheckStatus, EvidenceVerdict, TrustInputs
from cmcp_cli.testing.verdicts import assert_fails, statuses
from cmcp_tdx import pki
from cmcp_tdx import quote as tdx
from cmcp_tdx.synthetic import AT, IntelPki, PckFacts, td_body
from cmcp_tdx.verifier import TdxVerifier

BINDING = bytes(range(7, 39))
BODY_START = tdx.HEADER_SIZE
MRTD_OFFSET = BODY_START + 16 + 48 + 48 + 8 + 8 + 8


@pytest.fixture(scope="module")
def intel() -> IntelPki:
    return IntelPki.create()


def _verify(quote: bytes, roots: tuple[bytes, ...]) -> EvidenceVerdict:
    evidence = {"quote": base64.b64encode(quote).decode()}
    return TdxVerifier().verify(evidence, TrustInputs(binding=BINDING, at=AT, trust_roots=roots))


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


def test_a_synthetic_quote_passes_every_check_but_the_tcb_status(intel: IntelPki) -> None:
    quote = intel.quote(td_body(BINDING + bytes(32)))
    verdict = _verify(quote, (intel.root_pem(),))
    found = statuses(verdict)
    skipped = {"tdx.rtmr.replay", "tdx.tcb.status"}
    assert {name for name, status in found.items() if status is not CheckStatus.PASS} == skipped
    assert all(found[name] is CheckStatus.SKIP for name in skipped)
    assert verdict.hardware_attested and not verdict.failed
    parsed = tdx.parse_quote(quote)
    assert parsed.header.version == 4 and parsed.trailing == 0
    assert parsed.body == td_body(BINDING + bytes(32))


def test_the_pck_certificate_states_the_facts_given() -> None:
    facts = PckFacts(fmspc=bytes.fromhex("90c06f000000"), pce_svn=11, component_svns=(9,) * 16)
    info = pki.pck_info(IntelPki.create(facts).pck)
    assert (info.fmspc, info.pce_id, info.pce_svn) == (facts.fmspc, facts.pce_id, 11)
    assert info.component_svns == (9,) * 16 and info.cpu_svn == bytes([9] * 16)


def test_a_flipped_body_byte_fails_the_quote_signature(intel: IntelPki) -> None:
    quote = intel.quote(td_body(BINDING + bytes(32)))
    verdict = _verify(_flip(quote, MRTD_OFFSET), (intel.root_pem(),))
    assert_fails(verdict, "tdx.quote.signature", "does not verify")
    assert statuses(verdict)["tdx.qe.signature"] is CheckStatus.PASS


def test_a_flipped_qe_report_byte_fails_the_qe_signature(intel: IntelPki) -> None:
    quote = intel.quote(td_body(BINDING + bytes(32)))
    qe_report = tdx.parse_quote(quote).qe_report_raw
    offset = quote.index(qe_report) + 64  # MRENCLAVE: not the bound REPORTDATA
    verdict = _verify(_flip(quote, offset), (intel.root_pem(),))
    assert_fails(verdict, "tdx.qe.signature", "does not verify with the PCK")
    assert statuses(verdict)["tdx.qe.binding"] is CheckStatus.PASS


def test_another_attestation_key_is_not_vouched_for(intel: IntelPki) -> None:
    other = IntelPki(intel.root_key, intel.root, intel.ca_key, intel.ca, intel.pck_key, intel.pck)
    quote = bytearray(other.quote(td_body(BINDING + bytes(32))))
    genuine = tdx.parse_quote(intel.quote(td_body(BINDING + bytes(32))))
    start = quote.index(tdx.parse_quote(bytes(quote)).qe_report_raw)
    quote[start : start + tdx.QE_REPORT_SIZE + 64] = (
        genuine.qe_report_raw + genuine.qe_report_signature
    )  # the QE report of another attestation key, with its genuine signature
    verdict = _verify(bytes(quote), (intel.root_pem(),))
    assert_fails(verdict, "tdx.qe.binding", "did not vouch for the key")


def test_the_test_root_is_not_trusted_unless_given(intel: IntelPki) -> None:
    verdict = _verify(intel.quote(td_body(BINDING + bytes(32))), ())
    assert_fails(verdict, "tdx.pck.chain", "does not verify to a pinned root")
    assert_fails(verdict, "tdx.root.pinned", "the vendored Intel SGX Root CA")
    assert not verdict.hardware_attested
