"""The TPM collector against a real swtpm: detection, the bundle measurement, the AK's
lifecycle, the evidence it returns and the refusals a misconfigured host gets."""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cmcp_cli.attestation.api import GatewayFacts, ProviderError, TrustInputs
from cmcp_tpm import pcr, tpm_access
from cmcp_tpm.collector import TpmCollector, measure_bundle
from cmcp_tpm.plugin import SPEC
from cmcp_tpm.testing import SoftwareTpm, TestCa, enroll_attestation_key, read_pcrs
from cmcp_tpm.verifier import TpmVerifier

tss = pytest.importorskip("tpm2_pytss", reason="the collector needs tpm2-pytss (libtss2)")

BUNDLE_HASH = "sha256:" + hashlib.sha256(b"policy bundle").hexdigest()
FACTS = GatewayFacts(
    bundle_hash=BUNDLE_HASH,
    catalog_hash="sha256:" + "cd" * 32,
    gateway_digest="sha256:" + "ef" * 32,
)
EVIDENCE_MEMBERS = {
    "attest",
    "signature",
    "ak_public",
    "ak_hierarchy",
    "ak_certificates",
    "ek_certificates",
    "ak_tie",
    "pcrs",
    "event_log",
}
_handles = itertools.count(0x81010100)


def _handle() -> int:
    """A persistent handle no other test in the shared swtpm uses."""
    return next(_handles)


def _settings(tpm: SoftwareTpm, **extra: Any) -> dict[str, Any]:
    return {"tcti": tpm.tcti, "ak_handle": _handle(), **extra}


@pytest.fixture
def collector() -> Iterator[TpmCollector]:
    instance = TpmCollector()
    yield instance
    instance.close()


def _persist_signing_key(tcti: str, handle: int, *, owner: bool, restricted: bool) -> None:
    """Put an ECC P-256 signing primary that is no valid AK at `handle`."""
    attributes = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
    template = tss.TPMT_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null",
        objectAttributes=attributes + ("|restricted" if restricted else ""),
    )
    hierarchy = tss.ESYS_TR.OWNER if owner else tss.ESYS_TR.ENDORSEMENT
    esapi = tss.ESAPI(tcti)
    try:
        key, _, _, _, _ = esapi.create_primary(
            None, tss.TPM2B_PUBLIC(publicArea=template), hierarchy
        )
        esapi.evict_control(tss.ESYS_TR.OWNER, key, handle)
        esapi.flush_context(key)
    finally:
        esapi.close()


def _b64(value: Any) -> bytes:
    assert isinstance(value, str)
    return base64.b64decode(value, validate=True)


def _tpm2b(data: bytes, offset: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">H", data, offset)
    return data[offset + 2 : offset + 2 + size], offset + 2 + size


def _extra_data(attest: bytes) -> bytes:
    """TPMS_ATTEST: magic, type, qualifiedSigner (TPM2B), extraData (TPM2B), ..."""
    _, offset = _tpm2b(attest, 6)
    return _tpm2b(attest, offset)[0]


def _ak_key(ak_public: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    public = tss.TPMT_PUBLIC.unmarshal(ak_public)[0]
    key = serialization.load_der_public_key(bytes(public.to_der()))
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key


def _verify_quote_signature(evidence: Mapping[str, Any]) -> int:
    """Check the TPMT_SIGNATURE over attest with the AK; return its signature algorithm."""
    attest, signature = _b64(evidence["attest"]), _b64(evidence["signature"])
    key = _ak_key(_b64(evidence["ak_public"]))
    algorithm, hash_algorithm = struct.unpack_from(">HH", signature)
    assert hash_algorithm == 0x000B
    if algorithm == 0x0018:
        r, offset = _tpm2b(signature, 4)
        s, _ = _tpm2b(signature, offset)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        key.verify(der, attest, ec.ECDSA(hashes.SHA256()))
    else:
        assert algorithm == 0x0014
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(_tpm2b(signature, 4)[0], attest, padding.PKCS1v15(), hashes.SHA256())
    return int(algorithm)


# ------------------------------------------------------------------------------ detect


def test_detect_finds_the_software_tpm(software_tpm: SoftwareTpm) -> None:
    detection = TpmCollector().detect({"tcti": software_tpm.tcti})
    assert detection.present, detection.detail
    assert software_tpm.tcti in detection.detail
    assert "sha256" in detection.detail


def test_detect_reports_an_unreachable_tcti(software_tpm: SoftwareTpm) -> None:
    tcti = "swtpm:host=127.0.0.1,port=1"
    detection = TpmCollector().detect({"tcti": tcti})
    assert not detection.present
    assert tcti in detection.detail
    assert "IO failure" in detection.detail


def test_detect_reports_an_absent_device(tmp_path: Path) -> None:
    device = tmp_path / "tpmrm0"
    detection = TpmCollector().detect({"tcti": f"device:{device}"})
    assert not detection.present
    assert f"no TPM device at {device}" in detection.detail


def test_detect_reports_bad_settings_instead_of_raising() -> None:
    detection = TpmCollector().detect({"pcr": 7})
    assert not detection.present
    assert "attestation.providers.tpm.pcr" in detection.detail


def test_without_tpm2_pytss_the_collector_does_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tpm_access, "TSS_PROBLEM", "No module named 'tpm2_pytss'")
    with pytest.raises(ProviderError, match="tpm2-pytss is not usable") as raised:
        SPEC.load_collector()
    assert raised.value.hint == "install cmcp-tpm[collector] (needs libtss2)"


# ------------------------------------------------------------------------------ prepare


def test_prepare_resets_then_extends_the_bundle_hash(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm)
    expected = pcr.replay("sha256", [bytes.fromhex(BUNDLE_HASH.removeprefix("sha256:"))])
    collector.prepare(FACTS, settings)
    assert read_pcrs(software_tpm.tcti, (23,))[23] == expected
    restarted = TpmCollector()  # a restart measures again from reset, not on top
    try:
        restarted.prepare(FACTS, settings)
        assert read_pcrs(software_tpm.tcti, (23,))[23] == expected
    finally:
        restarted.close()


def test_prepare_again_extends_the_new_bundle_after_the_first(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    """The gateway took another bundle: its hash is extended on top, and the evidence's
    log names both, so either bundle's session verifies against the same quote."""
    settings = _settings(software_tpm)
    second = "sha256:" + hashlib.sha256(b"the next bundle").hexdigest()
    collector.prepare(FACTS, settings)
    collector.prepare(GatewayFacts(second, FACTS.catalog_hash, FACTS.gateway_digest), settings)
    digests = [bytes.fromhex(h.removeprefix("sha256:")) for h in (BUNDLE_HASH, second)]
    assert read_pcrs(software_tpm.tcti, (23,))[23] == pcr.replay("sha256", digests)
    binding = bytes(range(32))
    evidence = collector.collect(binding, settings).evidence
    assert [event["data"] for event in evidence["event_log"]] == [BUNDLE_HASH, second]
    verifier = TpmVerifier()
    for bundle in (BUNDLE_HASH, second):
        trust = TrustInputs(binding=binding, at=datetime.now(UTC), policy_hash=bundle)
        checks = {check.name: check for check in verifier.verify(evidence, trust).checks}
        assert checks["tpm.eventlog.replay"].status.value == "pass"
        assert checks["tpm.eventlog.policy"].status.value == "pass", checks["tpm.eventlog.policy"]
    other = "sha256:" + "11" * 32
    trust = TrustInputs(binding=binding, at=datetime.now(UTC), policy_hash=other)
    checks = {check.name: check for check in verifier.verify(evidence, trust).checks}
    assert checks["tpm.eventlog.policy"].status.value == "fail"


def test_prepare_can_use_pcr_16(software_tpm: SoftwareTpm, collector: TpmCollector) -> None:
    settings = _settings(software_tpm, pcr=16)
    collector.prepare(FACTS, settings)
    evidence = collector.collect(bytes(32), settings).evidence
    assert list(evidence["pcrs"]["sha256"]) == ["0", "1", "2", "3", "4", "5", "6", "7", "16"]
    assert evidence["event_log"][0]["pcr"] == 16


def test_a_pcr_the_tpm_will_not_reset_is_refused_with_the_resettable_ones(
    software_tpm: SoftwareTpm,
) -> None:
    esapi = tss.ESAPI(software_tpm.tcti)
    try:
        with pytest.raises(ProviderError, match="refused to reset PCR 7") as raised:
            measure_bundle(esapi, 7, BUNDLE_HASH)
    finally:
        esapi.close()
    assert "it lets software reset PCR 16, 23" in raised.value.message
    assert raised.value.hint == "set attestation.providers.tpm.pcr to one of those PCRs"


def test_the_ak_is_created_once_then_loaded(software_tpm: SoftwareTpm) -> None:
    settings = _settings(software_tpm)
    first, second = TpmCollector(), TpmCollector()
    try:
        first.prepare(FACTS, settings)
        created = first.collect(bytes(32), settings).evidence["ak_public"]
        first.close()
        second.prepare(FACTS, settings)
        loaded = second.collect(bytes(32), settings).evidence["ak_public"]
    finally:
        first.close()
        second.close()
    assert loaded == created
    ak_public = _b64(created)
    assert ak_public[:2] == b"\x00\x23"  # TPM_ALG_ECC: the default AK algorithm


def test_an_rsa_ak_signs_with_rsassa(software_tpm: SoftwareTpm, collector: TpmCollector) -> None:
    settings = _settings(software_tpm, ak_algorithm="rsa")
    settings["ak_handle"] = f"0x{settings['ak_handle']:08x}"  # handles may be hex strings
    collector.prepare(FACTS, settings)
    evidence = collector.collect(bytes(range(32)), settings).evidence
    assert _b64(evidence["ak_public"])[:2] == b"\x00\x01"  # TPM_ALG_RSA
    assert _verify_quote_signature(evidence) == 0x0014
    assert isinstance(_ak_key(_b64(evidence["ak_public"])), rsa.RSAPublicKey)


@pytest.mark.parametrize(
    ("owner", "restricted", "problem"),
    [
        (True, True, "not a primary key of the endorsement hierarchy"),
        (False, False, "not a restricted signing key (restricted not set)"),
    ],
)
def test_a_wrong_key_at_the_ak_handle_is_refused(
    software_tpm: SoftwareTpm,
    collector: TpmCollector,
    owner: bool,
    restricted: bool,
    problem: str,
) -> None:
    settings = _settings(software_tpm)
    _persist_signing_key(
        software_tpm.tcti, settings["ak_handle"], owner=owner, restricted=restricted
    )
    with pytest.raises(ProviderError, match="cannot be the AK") as raised:
        collector.prepare(FACTS, settings)
    assert problem in raised.value.message
    assert f"0x{settings['ak_handle']:08X}" in raised.value.message
    assert raised.value.hint is not None
    assert "tpm2_evictcontrol" in raised.value.hint


def test_an_ak_of_the_other_algorithm_is_refused(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm)
    collector.prepare(FACTS, settings)
    collector.close()
    with pytest.raises(ProviderError, match="it is not an RSA key"):
        collector.prepare(FACTS, {**settings, "ak_algorithm": "rsa"})


# ------------------------------------------------------------------------------ collect


def test_evidence_has_the_specified_shape(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm)
    binding = hashlib.sha256(b"session binding").digest()
    collector.prepare(FACTS, settings)
    result = collector.collect(binding, settings)
    evidence = result.evidence
    assert (result.evidence_type, result.platform) == ("tpm2-quote-v1", "tpm2")
    assert set(evidence) == EVIDENCE_MEMBERS
    attest = _b64(evidence["attest"])
    assert attest[:6] == bytes.fromhex("ff5443478018")  # TPM_GENERATED_VALUE, ATTEST_QUOTE
    assert _extra_data(attest) == binding
    assert _verify_quote_signature(evidence) == 0x0018
    assert evidence["ak_hierarchy"] == "endorsement"
    values = evidence["pcrs"]["sha256"]
    assert list(values) == ["0", "1", "2", "3", "4", "5", "6", "7", "23"]
    assert all(len(bytes.fromhex(v)) == 32 for v in values.values())
    composite = pcr.composite("sha256", (bytes.fromhex(v) for v in values.values()))
    assert result.measurement == f"sha256:{composite.hex()}"
    assert attest.endswith(b"\x00\x20" + composite)  # the quote's pcrDigest ends TPMS_ATTEST
    assert evidence["event_log"] == [
        {
            "pcr": 23,
            "bank": "sha256",
            "digest": BUNDLE_HASH.removeprefix("sha256:"),
            "type": "cmcp-policy-bundle",
            "data": BUNDLE_HASH,
        }
    ]
    replayed = pcr.replay("sha256", [bytes.fromhex(evidence["event_log"][0]["digest"])])
    assert values["23"] == replayed.hex()
    assert evidence["ak_tie"]["status"] == "untied"
    assert evidence["ak_certificates"] == []


def test_the_ek_certificates_written_by_swtpm_setup_are_read(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm)
    collector.prepare(FACTS, settings)
    evidence = collector.collect(bytes(32), settings).evidence
    # swtpm_setup provisions an RSA 2048 EK (low range) and an ECC P-384 EK (high range)
    certificates = [x509.load_der_x509_certificate(_b64(c)) for c in evidence["ek_certificates"]]
    keys = [c.public_key() for c in certificates]
    assert len(keys) == 2
    assert isinstance(keys[0], rsa.RSAPublicKey)
    assert isinstance(keys[1], ec.EllipticCurvePublicKey) and keys[1].curve.name == "secp384r1"
    authorities = x509.load_pem_x509_certificates(software_tpm.ek_ca_pem)
    for certificate in certificates:
        issuer = next(ca for ca in authorities if ca.subject == certificate.issuer)
        certificate.verify_directly_issued_by(issuer)


def test_no_ek_certificate_when_no_index_is_listed(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm, ek_cert_nv_indices=[])
    collector.prepare(FACTS, settings)
    assert collector.collect(bytes(32), settings).evidence["ek_certificates"] == []


def test_collect_checks_its_arguments(software_tpm: SoftwareTpm, collector: TpmCollector) -> None:
    settings = _settings(software_tpm)
    with pytest.raises(RuntimeError, match="without prepare"):
        collector.collect(bytes(32), settings)
    collector.prepare(FACTS, settings)
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        collector.collect(bytes(65), settings)
    with pytest.raises(ProviderError, match="changed after the gateway measured"):
        collector.collect(bytes(32), {**settings, "pcrs": [23]})


def test_collect_refuses_when_the_measurement_was_extended_over(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm)
    collector.prepare(FACTS, settings)
    esapi = tss.ESAPI(software_tpm.tcti)
    try:
        digest = tss.TPMU_HA(sha256=bytes(32))
        extend = tss.TPML_DIGEST_VALUES([tss.TPMT_HA(hashAlg=tss.TPM2_ALG.SHA256, digest=digest)])
        esapi.pcr_extend(tss.ESYS_TR.PCR23, extend)
    finally:
        esapi.close()
    with pytest.raises(ProviderError, match="PCR 23 no longer holds") as raised:
        collector.collect(bytes(32), settings)
    assert raised.value.hint is not None
    assert "restart the gateway" in raised.value.hint


def test_a_malformed_bundle_hash_is_refused(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    facts = GatewayFacts("sha384:" + "ab" * 48, FACTS.catalog_hash, FACTS.gateway_digest)
    with pytest.raises(ProviderError, match="is not sha256:<64 hex>"):
        collector.prepare(facts, _settings(software_tpm))


def test_concurrent_collects_each_get_their_own_binding(
    software_tpm: SoftwareTpm, collector: TpmCollector
) -> None:
    settings = _settings(software_tpm)
    collector.prepare(FACTS, settings)
    workers = 8
    start = threading.Barrier(workers, timeout=10)

    def worker(worker_id: int) -> list[tuple[bytes, bytes]]:
        start.wait()
        quotes = []
        for round_number in range(5):
            binding = hashlib.sha256(f"{worker_id}/{round_number}".encode()).digest()
            evidence = collector.collect(binding, settings).evidence
            quotes.append((binding, _b64(evidence["attest"])))
        return quotes

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(worker, n) for n in range(workers)]
        results = [pair for future in futures for pair in future.result(timeout=30)]
    assert len({binding for binding, _ in results}) == 40
    assert all(_extra_data(attest) == binding for binding, attest in results)


# ------------------------------------------------------------------------------ AK tie


def test_the_ak_is_untied_until_enrolled_then_certified(
    fresh_software_tpm: SoftwareTpm, test_ca: TestCa
) -> None:
    settings = {"tcti": fresh_software_tpm.tcti}
    collector = TpmCollector()
    try:
        collector.prepare(FACTS, settings)
        untied = collector.collect(bytes(32), settings).evidence
        collector.close()
        assert untied["ak_tie"] == {"status": "untied"}
        der = enroll_attestation_key(fresh_software_tpm.tcti, 0x81010002, test_ca)
        collector.prepare(FACTS, settings)
        certified = collector.collect(bytes(32), settings).evidence
    finally:
        collector.close()
    assert certified["ak_tie"] == {"status": "certified"}
    assert [_b64(c) for c in certified["ak_certificates"]] == [der]
    certificate = x509.load_der_x509_certificate(der)
    certificate.verify_directly_issued_by(test_ca.certificate)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert certificate.public_key().public_bytes(serialization.Encoding.DER, spki) == _ak_key(
        _b64(certified["ak_public"])
    ).public_bytes(serialization.Encoding.DER, spki)


def test_an_ak_certificate_for_another_key_stops_the_gateway(
    fresh_software_tpm: SoftwareTpm, test_ca: TestCa
) -> None:
    tcti = fresh_software_tpm.tcti
    collector = TpmCollector()
    try:
        collector.prepare(FACTS, {"tcti": tcti})
        collector.close()
        enroll_attestation_key(tcti, 0x81010002, test_ca)
        with pytest.raises(ProviderError, match="certifies a different key") as raised:
            collector.prepare(FACTS, {"tcti": tcti, "ak_algorithm": "rsa", "ak_handle": _handle()})
    finally:
        collector.close()
    assert raised.value.hint is not None
    assert "enroll the AK again" in raised.value.hint


# ------------------------------------------------------------------------------ verifier


def test_enrolled_evidence_verifies_as_hardware_attested(
    fresh_software_tpm: SoftwareTpm, test_ca: TestCa
) -> None:
    settings = {"tcti": fresh_software_tpm.tcti}
    binding = hashlib.sha256(b"claim binding").digest()
    trust = TrustInputs(
        binding=binding,
        at=datetime.now(UTC),
        trust_roots=(test_ca.root_pem, fresh_software_tpm.ek_ca_pem),
        policy_hash=BUNDLE_HASH,
    )
    collector = TpmCollector()
    try:
        collector.prepare(FACTS, settings)
        untied = collector.collect(binding, settings)
        collector.close()
        enroll_attestation_key(fresh_software_tpm.tcti, 0x81010002, test_ca)
        collector.prepare(FACTS, settings)
        certified = collector.collect(binding, settings)
    finally:
        collector.close()
    verifier = TpmVerifier()
    before = verifier.verify(untied.evidence, trust)
    assert not before.failed, before.checks
    assert not before.hardware_attested
    after = verifier.verify(certified.evidence, trust)
    statuses = {check.name: check.status.value for check in after.checks}
    assert not after.failed, after.checks
    assert after.hardware_attested, after.checks
    assert statuses["tpm.ak.certificate"] == "pass"
    assert statuses["tpm.ek.certificate"] == "pass"
    assert after.measurement == certified.measurement
