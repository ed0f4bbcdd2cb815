"""The TPM 2.0 collector: measures the policy bundle into a PCR and quotes it per session.

At gateway start `prepare` resets the gateway's PCR and extends it with the bundle hash,
creates (once) or loads the attestation key (a restricted signing primary key of the
endorsement hierarchy, persisted at `ak_handle`), and reads the AK and EK certificates from
NV. Per session `collect` asks the TPM for a quote over the PCR selection with the session
binding as qualifyingData and returns it with everything a verifier needs offline.

ESAPI contexts are not thread-safe, so every TPM command runs under one lock. tpm2-pytss
(which needs libtss2) comes through `tpm_access`; where it is not usable, making a
collector raises `ProviderError` with the install hint, so the host reports the provider
unavailable.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cmcp_cli.attestation.api import Collector, Detection, Evidence, GatewayFacts, ProviderError
from cmcp_cli.attestation.prepared import PreparedState
from cmcp_tpm import pcr as pcr_math
from cmcp_tpm import tpm_access
from cmcp_tpm.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_tpm.settings import (
    PERSISTENT_FIRST,
    SECTION,
    AkAlgorithm,
    TpmSettings,
)
from cmcp_tpm.structures import signing_key_problems
from cmcp_tpm.tpm_access import (
    ESAPI,
    ESYS_TR,
    TPM2B_PUBLIC,
    TPMT_PUBLIC,
    TSS2_Exception,
    defined_handles,
    open_tpm,
    read_certificates,
    tpm_errors,
    tss,
)

ENDORSEMENT_HIERARCHY: Final = 0x4000000B  # TPM_RH_ENDORSEMENT, the AK's hierarchy
_HASH_OF_ALGORITHM: Final = {0x000B: "sha256", 0x000C: "sha384"}
_SIGNING_SCHEMES: Final = frozenset({0x0014, 0x0016, 0x0018})  # RSASSA, RSAPSS, ECDSA
_ALG_RSA: Final = 0x0001
_ALG_ECC: Final = 0x0023
_ECC_CURVES: Final = frozenset({0x0003, 0x0004})  # NIST P-256, P-384
_QUOTE_ATTEMPTS: Final = 3
_BUNDLE_EVENT: Final = "cmcp-policy-bundle"
_AK_FIX: Final = (
    f"evict it (tpm2_evictcontrol -C o -c <handle>) so the gateway creates its AK there, "
    f"or set {SECTION}.ak_handle to a free persistent handle"
)


@dataclass(frozen=True)
class _Prepared:
    """What `prepare` established; `collect` only reads it."""

    settings: TpmSettings
    esapi: ESAPI
    ak: ESYS_TR
    ak_public: bytes  # marshaled TPMT_PUBLIC
    ak_certificates: tuple[bytes, ...]
    ek_certificates: tuple[bytes, ...]
    event_log: tuple[Mapping[str, str | int], ...]
    measured_value: bytes  # what `settings.pcr` holds after the extends in `event_log`


class TpmCollector(Collector):
    """Collector for provider `tpm`; one instance per gateway process."""

    def __init__(self) -> None:
        tpm_access.require_tss()  # where tpm2-pytss is unusable, no collector is made
        self._state: PreparedState[_Prepared] = PreparedState(
            "TpmCollector", lambda prepared: prepared.esapi.close()
        )

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            tcti = TpmSettings.parse(settings).tcti
        except ProviderError as error:
            return Detection(False, f"{error.message} ({error.hint})")
        device = device_path(tcti)
        if device is not None and not device.exists():
            return Detection(False, f"no TPM device at {device} ({SECTION}.tcti = {tcti!r})")
        try:
            with self._state.lock:
                prepared = self._state.current
                if prepared is not None and prepared.settings.tcti == tcti:
                    return Detection(True, _describe(prepared.esapi, tcti))
                esapi = open_tpm(tcti)
                try:
                    return Detection(True, _describe(esapi, tcti))
                finally:
                    esapi.close()
        except ProviderError as error:
            return Detection(False, error.message)
        except Exception as error:  # noqa: BLE001 - detect answers with a reason, never raises
            return Detection(False, f"the TPM at {tcti!r} could not be queried: {error}")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:
        """At start: reset the PCR and extend it with the bundle hash, load the AK. Again
        with the same settings (the gateway took another bundle): extend the PCR with the
        new hash, never reset it, so that its log names every bundle the gateway ran."""
        parsed = TpmSettings.parse(settings)
        with self._state.lock:
            prepared = self._state.current
            if prepared is not None and prepared.settings == parsed:
                event = extend_bundle(prepared.esapi, parsed.pcr, facts.bundle_hash)
                log = (*prepared.event_log, event)
                measured = pcr_math.replay(
                    "sha256", [bytes.fromhex(str(logged["digest"])) for logged in log]
                )
                # the same TPM session and AK: updated, not released
                self._state.current = replace(prepared, event_log=log, measured_value=measured)
                return
            self._state.replace_locked(None)
            esapi = open_tpm(parsed.tcti)
            try:
                event = measure_bundle(esapi, parsed.pcr, facts.bundle_hash)
                ak, ak_public, ak_spki = _create_or_load_ak(esapi, parsed)
                ak_certificates = read_certificates(esapi, (parsed.ak_cert_nv_index,))
                for certificate in ak_certificates:
                    _check_certifies(certificate, ak_spki, parsed)
                ek_certificates = read_certificates(esapi, parsed.ek_cert_nv_indices)
            except BaseException:
                esapi.close()
                raise
            measured = pcr_math.replay("sha256", [bytes.fromhex(str(event["digest"]))])
            self._state.replace_locked(
                _Prepared(
                    parsed,
                    esapi,
                    ak,
                    ak_public,
                    ak_certificates,
                    ek_certificates,
                    (event,),
                    measured,
                )
            )

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        parsed = TpmSettings.parse(settings)
        if not 1 <= len(binding) <= 64:  # TPM2B_DATA holds at most one SHA-512 digest
            raise ValueError(f"a TPM quote binds 1 to 64 bytes, not {len(binding)}")
        with self._state.lock:
            prepared = self._state.for_collect_locked(
                parsed,
                f"{SECTION} changed after the gateway measured the policy bundle",
                hint="restart the gateway so that it measures and loads the AK again",
            )
            attest, signature, values, pcr_digest = _quote(prepared, binding)
        if values[parsed.pcr] != prepared.measured_value:
            raise ProviderError(
                f"PCR {parsed.pcr} no longer holds the gateway's measurement of the policy "
                "bundle: the TPM was reset, or something else extended that PCR",
                hint="restart the gateway to measure the bundle again; if this recurs, choose "
                f"a PCR no other software uses ({SECTION}.pcr)",
            )
        return Evidence(
            evidence_type=EVIDENCE_TYPE,
            evidence=_evidence(prepared, attest, signature, values),
            platform=PLATFORM,
            measurement=pcr_math.measurement_string(_digest_hash(pcr_digest), pcr_digest),
        )

    def close(self) -> None:
        self._state.close()


def device_path(tcti: str) -> Path | None:
    """The character device a `device:` TCTI opens (tpm2-tss defaults to /dev/tpm0)."""
    name, _, config = tcti.partition(":")
    return Path(config or "/dev/tpm0") if name == "device" else None


def _describe(esapi: ESAPI, tcti: str) -> str:
    with tpm_errors(f"the TPM at {tcti!r} does not answer", f"check {SECTION}.tcti"):
        _, data = esapi.get_capability(tss.TPM2_CAP.TPM_PROPERTIES, 0x105, 1)
        vendor = int(data.data.tpmProperties[0].value).to_bytes(4, "big")
        _, banks = esapi.get_capability(tss.TPM2_CAP.PCRS, 0, 1)
    active = [
        pcr_math.BANK_OF_ALGORITHM.get(int(s.hash), hex(int(s.hash)))
        for s in banks.data.assignedPCR
        if any(bytes(s.pcrSelect)[: int(s.sizeofSelect)])
    ]
    if "sha256" not in active:
        raise ProviderError(f"the TPM at {tcti!r} has no active sha256 PCR bank")
    manufacturer = vendor.rstrip(b"\0").decode("ascii", "replace") or "unknown"
    return f"TPM 2.0 by {manufacturer} at {tcti!r}; PCR banks {', '.join(active)}"


def measure_bundle(esapi: ESAPI, pcr: int, bundle_hash: str) -> dict[str, str | int]:
    """Reset `pcr`, extend its sha256 bank with the bundle hash; return the event logged."""
    _bundle_digest(bundle_hash)  # checked before the PCR is touched
    handle = ESYS_TR(pcr)
    try:
        esapi.pcr_reset(handle)
    except TSS2_Exception as error:
        allowed = ", ".join(map(str, _resettable_pcrs(esapi))) or "none"
        raise ProviderError(
            f"the TPM refused to reset PCR {pcr} ({error}); at locality 0 it lets software "
            f"reset PCR {allowed}",
            hint=f"set {SECTION}.pcr to one of those PCRs",
        ) from None
    return extend_bundle(esapi, pcr, bundle_hash)


def extend_bundle(esapi: ESAPI, pcr: int, bundle_hash: str) -> dict[str, str | int]:
    """Extend the sha256 bank of `pcr` with the bundle hash; return the event logged."""
    digest = _bundle_digest(bundle_hash)
    handle = ESYS_TR(pcr)
    extend = tss.TPML_DIGEST_VALUES(
        [tss.TPMT_HA(hashAlg=tss.TPM2_ALG.SHA256, digest=tss.TPMU_HA(sha256=digest))]
    )
    with tpm_errors(
        f"extending PCR {pcr} with the policy bundle hash",
        f"that PCR needs an authorization the gateway lacks; choose another {SECTION}.pcr",
    ):
        esapi.pcr_extend(handle, extend)
    return {
        "pcr": pcr,
        "bank": "sha256",
        "digest": digest.hex(),
        "type": _BUNDLE_EVENT,
        "data": bundle_hash,
    }


def _bundle_digest(bundle_hash: str) -> bytes:
    algorithm, _, hex_digest = bundle_hash.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64 or hex_digest.strip("0123456789abcdef"):
        raise ProviderError(f"the policy bundle hash {bundle_hash!r} is not sha256:<64 hex>")
    return bytes.fromhex(hex_digest)


def _resettable_pcrs(esapi: ESAPI) -> list[int]:
    try:
        _, data = esapi.get_capability(tss.TPM2_CAP.PCR_PROPERTIES, tss.TPM2_PT_PCR.RESET_L0, 1)
        prop = data.data.pcrProperties[0]
        select = bytes(prop.pcrSelect)[: int(prop.sizeofSelect)]
    except (TSS2_Exception, IndexError):
        return []
    return _selected(select)


def _selected(bitmap: bytes) -> list[int]:
    """The PCR indices a TPMS_PCR_SELECTION bitmap selects (bit i%8 of byte i//8)."""
    return [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1]


def ak_template(algorithm: AkAlgorithm) -> TPM2B_PUBLIC:
    """The AK's TPM2B_PUBLIC: restricted signing, empty auth, the scheme fixed in the key."""
    attributes = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
    # A restricted signing key has no symmetric algorithm (`null`).
    spec = "ecc256:ecdsa-sha256:null" if algorithm == "ecc" else "rsa2048:rsassa-sha256:null"
    public = tss.TPMT_PUBLIC.parse(spec, objectAttributes=attributes, nameAlg="sha256")
    return TPM2B_PUBLIC(publicArea=public)


def _create_or_load_ak(esapi: ESAPI, settings: TpmSettings) -> tuple[ESYS_TR, bytes, bytes]:
    """The AK at `ak_handle` (created and persisted when the handle is free), its marshaled
    TPMT_PUBLIC and its SubjectPublicKeyInfo DER."""
    handle = settings.ak_handle
    where = f"{SECTION}.ak_handle 0x{handle:08X}"
    with tpm_errors(f"loading the AK at {where}", _AK_FIX):
        exists = handle in defined_handles(esapi, PERSISTENT_FIRST)
        ak = esapi.tr_from_tpmpublic(handle) if exists else None
    if ak is None:
        with tpm_errors(
            "creating the AK in the endorsement hierarchy",
            "the endorsement hierarchy needs an empty authorization value for the gateway",
        ):
            transient, _, _, _, _ = esapi.create_primary(
                None, ak_template(settings.ak_algorithm), ESYS_TR.ENDORSEMENT
            )
        try:
            with tpm_errors(
                f"persisting the AK at {where}",
                "the owner hierarchy needs an empty authorization value, and the TPM free "
                "persistent slots",
            ):
                ak = esapi.evict_control(ESYS_TR.OWNER, transient, handle)
        finally:
            with tpm_errors("flushing the transient AK", "restart the TPM resource manager"):
                esapi.flush_context(transient)
    with tpm_errors(f"reading the AK's public area at {where}", _AK_FIX):
        public, name, qualified_name = esapi.read_public(ak)
    marshaled = bytes(public.publicArea.marshal())
    problem = _ak_problem(public.publicArea, marshaled, bytes(name), bytes(qualified_name))
    algorithm = "rsa" if int(public.publicArea.type) == _ALG_RSA else "ecc"
    if problem is None and algorithm != settings.ak_algorithm:
        problem = f"it is not an {settings.ak_algorithm.upper()} key ({SECTION}.ak_algorithm)"
    if problem is not None:
        raise ProviderError(f"the key at {where} cannot be the AK: {problem}", hint=_AK_FIX)
    return ak, marshaled, bytes(public.publicArea.to_der())


def _ak_problem(
    public: TPMT_PUBLIC, marshaled: bytes, name: bytes, qualified_name: bytes
) -> str | None:
    """Why this key is not an AK the verifier accepts, or None."""
    problems = signing_key_problems(int(public.objectAttributes))
    if problems:
        return f"it is not a restricted signing key ({', '.join(problems)})"
    hash_name = _HASH_OF_ALGORITHM.get(int(public.nameAlg))
    if hash_name is None:
        return f"its name algorithm 0x{int(public.nameAlg):04X} is not SHA-256 or SHA-384"
    if name != name[:2] + hashlib.new(hash_name, marshaled).digest():
        return "the Name the TPM reports does not match its public area"
    handle = ENDORSEMENT_HIERARCHY.to_bytes(4, "big")
    if qualified_name != name[:2] + hashlib.new(hash_name, handle + name).digest():
        return "it is not a primary key of the endorsement hierarchy (its qualified name differs)"
    kind = int(public.type)
    if kind not in {_ALG_ECC, _ALG_RSA}:
        return f"its type 0x{kind:04X} is neither RSA nor ECC"
    detail = public.parameters.eccDetail if kind == _ALG_ECC else public.parameters.rsaDetail
    if kind == _ALG_ECC and int(detail.curveID) not in _ECC_CURVES:
        return f"its curve 0x{int(detail.curveID):04X} is not NIST P-256 or P-384"
    if kind == _ALG_RSA and int(detail.keyBits) < 2048:
        return f"its RSA key has {int(detail.keyBits)} bits, fewer than 2048"
    scheme = int(detail.scheme.scheme)
    scheme_hash = int(detail.scheme.details.anySig.hashAlg) if scheme in _SIGNING_SCHEMES else 0
    if scheme not in _SIGNING_SCHEMES or scheme_hash not in _HASH_OF_ALGORITHM:
        return "its signing scheme is not RSASSA, RSAPSS or ECDSA with SHA-256 or SHA-384"
    return None


def _check_certifies(certificate: bytes, ak_spki: bytes, settings: TpmSettings) -> None:
    certified = x509.load_der_x509_certificate(certificate).public_key()
    spki = certified.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if spki != ak_spki:
        raise ProviderError(
            f"the AK certificate at NV index 0x{settings.ak_cert_nv_index:08X} certifies a "
            f"different key than the AK at handle 0x{settings.ak_handle:08X}",
            hint="enroll the AK again (the key at the handle was replaced), or undefine the "
            "stale NV index",
        )


def _quote(prepared: _Prepared, binding: bytes) -> tuple[bytes, bytes, dict[int, bytes], bytes]:
    return quote_pcrs(prepared.esapi, prepared.ak, prepared.settings.pcrs, binding)


def quote_pcrs(
    esapi: ESAPI, ak: ESYS_TR, indices: tuple[int, ...], qualifying_data: bytes
) -> tuple[bytes, bytes, dict[int, bytes], bytes]:
    """A quote of the sha256 PCRs `indices` by the AK with the key's own signing scheme: the
    TPMS_ATTEST, the marshaled TPMT_SIGNATURE, the PCR values it covers and its pcrDigest.
    The PCRs are read until they agree with the quote's pcrDigest (a PCR extended between
    the quote and the read would otherwise yield unverifiable evidence)."""
    selection = tss.TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, indices)))
    for _ in range(_QUOTE_ATTEMPTS):
        with tpm_errors("quoting the PCRs with the AK", "check the TPM's health"):
            attest, signature = esapi.quote(ak, selection, qualifying_data)
            values = read_pcrs(esapi, indices)
        attest_bytes = bytes(attest)
        digest = bytes(tss.TPMS_ATTEST.unmarshal(attest_bytes)[0].attested.quote.pcrDigest)
        expected = pcr_math.composite(_digest_hash(digest), (values[i] for i in indices))
        if expected == digest:
            return attest_bytes, bytes(signature.marshal()), values, digest
    raise ProviderError(
        f"the PCRs changed between the quote and the read {_QUOTE_ATTEMPTS} times",
        hint="something keeps extending the quoted PCRs; retry, or quote fewer PCRs",
    )


def read_pcrs(esapi: ESAPI, indices: tuple[int, ...]) -> dict[int, bytes]:
    """The sha256 values of `indices`; the TPM returns at most 8 per PCR_Read."""
    values: dict[int, bytes] = {}
    remaining = list(indices)
    while remaining:
        selection = tss.TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, remaining)))
        _, returned, digests = esapi.pcr_read(selection)
        read = [
            index
            for entry in returned.pcrSelections[: int(returned.count)]
            if int(entry.hash) == pcr_math.BANK_ALGORITHMS["sha256"]
            for index in _selected(bytes(entry.pcrSelect)[: int(entry.sizeofSelect)])
        ]
        if not read:
            raise ProviderError(
                f"the TPM returned no sha256 value for PCR {', '.join(map(str, remaining))}",
                hint="activate the sha256 PCR bank (tpm2_pcrallocate) or quote fewer PCRs",
            )
        values.update(zip(read, (bytes(d) for d in digests.digests), strict=True))
        remaining = [index for index in remaining if index not in values]
    return values


def _digest_hash(digest: bytes) -> str:
    return "sha384" if len(digest) == 48 else "sha256"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _evidence(
    prepared: _Prepared, attest: bytes, signature: bytes, values: Mapping[int, bytes]
) -> dict[str, Any]:
    tie = {"status": "certified" if prepared.ak_certificates else "untied"}
    return {
        "attest": _b64(attest),
        "signature": _b64(signature),
        "ak_public": _b64(prepared.ak_public),
        "ak_hierarchy": "endorsement",
        "ak_certificates": [_b64(c) for c in prepared.ak_certificates],
        "ek_certificates": [_b64(c) for c in prepared.ek_certificates],
        "ak_tie": tie,
        "pcrs": {"sha256": {str(i): values[i].hex() for i in prepared.settings.pcrs}},
        "event_log": [dict(event) for event in prepared.event_log],
    }
