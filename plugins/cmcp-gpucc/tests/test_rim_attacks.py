"""`verify_rim` against RIMs made to pass where they must not: another key, another root,
wrapped or unsigned content, weaker algorithms, DTDs, broken chains and malformed manifests.
Synthetic RIMs are signed by signxml under the test PKI of `rim_signing`; the genuine
NVIDIA RIM serves where an attacker starts from a real one."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree  # type: ignore[import-untyped]
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from cmcp_gpucc.rim import DSIG, MAX_RIM_BYTES, SWID, RimError, parse_rim, verify_rim
from cmcp_gpucc.rim_signing import AT, Issued, RimPki, issue, rim_document, sign_rim
from cmcp_gpucc.roots import vendored

GENUINE = "nvat-rim-NV_GPU_DRIVER_GH100_550.144.03.xml"
GENUINE_AT = datetime(2026, 12, 1, tzinfo=UTC)
GOLDEN = {7: [bytes([7]) * 48], 21: [bytes([0xA0]) * 48, bytes([21]) * 48]}


@pytest.fixture(scope="module")
def pki() -> RimPki:
    return RimPki.create()


@pytest.fixture(scope="module")
def document() -> bytes:
    return rim_document(GOLDEN, version="550.144.03")


def signed_tree(pki: RimPki, document: bytes) -> etree._Element:
    return etree.fromstring(pki.sign(document))


def text(tree: etree._Element) -> bytes:
    data: bytes = etree.tostring(tree)
    return data


def test_a_synthetic_rim_verifies_under_its_test_root(pki: RimPki, document: bytes) -> None:
    rim = verify_rim(pki.sign(document), [pki.root.cert], AT)
    assert rim.version == "550.144.03" and rim.kind == "driver"
    assert {m.index: list(m.alternatives) for m in rim.active} == GOLDEN
    assert rim.signer_chain == pki.chain


def test_a_test_rim_does_not_verify_under_nvidia_roots(pki: RimPki, document: bytes) -> None:
    nvidia = [anchor.cert for anchor in vendored().rim]
    with pytest.raises(RimError, match="self-signed certificate that is not a pinned"):
        verify_rim(pki.sign(document), nvidia, AT)


def test_nvidias_chain_with_another_key_fails_the_signature(vectors: Path, document: bytes) -> None:
    """An attacker signs their own manifest and embeds NVIDIA's genuine signer chain: the
    chain walks to the pinned root, but the signature is checked with that chain's leaf."""
    genuine = etree.fromstring((vectors / GENUINE).read_bytes())
    path = f".//{{{DSIG}}}X509Certificate"
    chain = [
        x509.load_der_x509_certificate(base64.b64decode("".join(e.text.split())))
        for e in genuine.iterfind(path)
    ]
    forged = sign_rim(document, ec.generate_private_key(ec.SECP384R1()), chain)
    nvidia = [anchor.cert for anchor in vendored().rim]
    with pytest.raises(RimError, match='does not verify with the key of "HCC RIM L4 Signer"'):
        verify_rim(forged, nvidia, GENUINE_AT)


def test_a_root_with_the_pinned_name_but_another_key_fails(pki: RimPki, document: bytes) -> None:
    impostor_root = issue("cMCP Test CoRIM signing Root CA", None, ca=True)
    ca = issue("cMCP Test Reference Value GH100 CA", impostor_root, ca=True)
    signer = issue("cMCP Test RIM L4 Signer", ca, ca=False)
    forged = sign_rim(document, signer.key, (signer.cert, ca.cert, impostor_root.cert))
    with pytest.raises(RimError, match="self-signed certificate that is not a pinned"):
        verify_rim(forged, [pki.root.cert], AT)
    # Without the impostor embedded, the pinned root of that name did not sign the CA.
    short = sign_rim(document, signer.key, (signer.cert, ca.cert))
    with pytest.raises(RimError, match="whose key did not sign it"):
        verify_rim(short, [pki.root.cert], AT)


def test_a_key_value_for_another_key_is_refused(pki: RimPki, document: bytes) -> None:
    tree = signed_tree(pki, document)
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    key_info = tree.find(f"{{{DSIG}}}Signature/{{{DSIG}}}KeyInfo")
    dsig11 = "http://www.w3.org/2009/xmldsig11#"
    value = etree.SubElement(key_info, f"{{{DSIG}}}KeyValue")
    ec_value = etree.SubElement(value, f"{{{dsig11}}}ECKeyValue")
    etree.SubElement(ec_value, f"{{{dsig11}}}NamedCurve").set("URI", "urn:oid:1.3.132.0.34")
    point = b"\x04" + other.x.to_bytes(48, "big") + other.y.to_bytes(48, "big")
    etree.SubElement(ec_value, f"{{{dsig11}}}PublicKey").text = base64.b64encode(point)
    with pytest.raises(RimError, match="cannot be checked: Both X509Data and KeyValue"):
        verify_rim(text(tree), [pki.root.cert], AT)


def test_content_outside_the_signed_bytes_is_never_read(pki: RimPki, document: bytes) -> None:
    """A Payload hidden inside the signature (which the enveloped transform removes before
    digesting) keeps the signature valid, and is not what the verified RIM says."""
    tree = signed_tree(pki, document)
    signature = tree.find(f"{{{DSIG}}}Signature")
    hidden = etree.SubElement(signature, f"{{{DSIG}}}Object")
    payload = etree.SubElement(hidden, f"{{{SWID}}}Payload")
    resource = etree.SubElement(payload, f"{{{SWID}}}Resource")
    for key, value in {"type": "Measurement", "index": "7", "active": "True"}.items():
        resource.set(key, value)
    rim = verify_rim(text(tree), [pki.root.cert], AT)
    assert {m.index: list(m.alternatives) for m in rim.active} == GOLDEN


@pytest.mark.parametrize(
    "edit",
    ["value", "active", "extra_resource", "version"],
)
def test_an_edited_manifest_fails_the_reference_digest(
    pki: RimPki, document: bytes, edit: str
) -> None:
    tree = signed_tree(pki, document)
    payload = tree.find(f"{{{SWID}}}Payload")
    resources = payload.findall(f"{{{SWID}}}Resource")
    hash_0 = "{http://www.w3.org/2001/04/xmlenc#sha384}Hash0"
    if edit == "value":
        resources[7].set(hash_0, "ff" * 48)
    elif edit == "active":
        resources[21].set("active", "False")
    elif edit == "extra_resource":
        payload.append(etree.fromstring(etree.tostring(resources[0])))
        payload[-1].set("index", "99")
    else:
        tree.find(f"{{{SWID}}}Meta").set("colloquialVersion", "999.1")
    with pytest.raises(RimError, match="reference digest does not match"):
        verify_rim(text(tree), [pki.root.cert], AT)


def test_a_reference_to_part_of_the_document_is_refused(pki: RimPki) -> None:
    tree = etree.fromstring(rim_document(GOLDEN, version="550.144.03"))
    tree.find(f"{{{SWID}}}Meta").set("Id", "meta")
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    signed = signer.sign(tree, key=pki.signer.key, cert=list(pki.chain), reference_uri="#meta")
    with pytest.raises(RimError, match="exactly one reference to the whole document"):
        verify_rim(etree.tostring(signed), [pki.root.cert], AT)


def test_two_signatures_are_refused(pki: RimPki, document: bytes) -> None:
    tree = signed_tree(pki, document)
    tree.append(etree.fromstring(etree.tostring(tree.find(f"{{{DSIG}}}Signature"))))
    with pytest.raises(RimError, match="2 XML signatures"):
        verify_rim(text(tree), [pki.root.cert], AT)


def test_a_signature_nested_below_the_root_is_refused(pki: RimPki, document: bytes) -> None:
    tree = signed_tree(pki, document)
    signature = tree.find(f"{{{DSIG}}}Signature")
    tree.remove(signature)
    tree.find(f"{{{SWID}}}Payload").append(signature)
    with pytest.raises(RimError, match="enveloped in the SoftwareIdentity element"):
        verify_rim(text(tree), [pki.root.cert], AT)


@pytest.mark.parametrize(
    ("method", "digest", "reason"),
    [
        (SignatureMethod.ECDSA_SHA256, DigestAlgorithm.SHA384, "ECDSA_SHA256 forbidden"),
        (SignatureMethod.ECDSA_SHA384, DigestAlgorithm.SHA256, "SHA256 forbidden"),
    ],
)
def test_other_algorithms_are_refused(
    pki: RimPki, document: bytes, method: SignatureMethod, digest: DigestAlgorithm, reason: str
) -> None:
    signer = XMLSigner(
        signature_algorithm=method,
        digest_algorithm=digest,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    signed = signer.sign(etree.fromstring(document), key=pki.signer.key, cert=list(pki.chain))
    with pytest.raises(RimError, match=reason):
        verify_rim(etree.tostring(signed), [pki.root.cert], AT)


@pytest.mark.parametrize(
    "doctype",
    [
        b'<!DOCTYPE SoftwareIdentity [<!ENTITY v "550.144.03">]>',
        b'<!DOCTYPE SoftwareIdentity [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
        b'<!DOCTYPE SoftwareIdentity SYSTEM "http://127.0.0.1:9/rim.dtd">',
        b"<!DOCTYPE SoftwareIdentity>",
    ],
)
def test_a_dtd_is_refused(pki: RimPki, document: bytes, doctype: bytes) -> None:
    signed = pki.sign(document)
    with pytest.raises(RimError, match="has a DOCTYPE"):
        verify_rim(doctype + signed, [pki.root.cert], AT)
    with pytest.raises(RimError, match="has a DOCTYPE"):
        parse_rim(doctype + signed)


def chain_of(*links: Issued) -> tuple[x509.Certificate, ...]:
    return tuple(link.cert for link in links)


def test_chain_links_must_be_cas_within_their_path_length(document: bytes) -> None:
    root = issue("Test Root", None, ca=True)
    ca = issue("Test CA", root, ca=True, path_length=0)
    middle = issue("Test Middle", ca, ca=True)
    signer = issue("Test Signer", middle, ca=False)
    rim = sign_rim(document, signer.key, chain_of(signer, middle, ca, root))
    with pytest.raises(RimError, match='"Test CA" allows 0 CA certificate'):
        verify_rim(rim, [root.cert], AT)

    not_ca = issue("Test Not CA", root, ca=False)
    signer = issue("Test Signer", not_ca, ca=False)
    rim = sign_rim(document, signer.key, chain_of(signer, not_ca, root))
    with pytest.raises(RimError, match='"Test Not CA" is not a CA certificate'):
        verify_rim(rim, [root.cert], AT)


def test_the_signer_must_be_a_p384_end_entity(document: bytes) -> None:
    root = issue("Test Root", None, ca=True)
    ca_signer = issue("Test CA Signer", root, ca=True)
    rim = sign_rim(document, ca_signer.key, chain_of(ca_signer, root))
    with pytest.raises(RimError, match="is a CA certificate, not a signing certificate"):
        verify_rim(rim, [root.cert], AT)

    p256 = issue("Test P-256", root, ca=False, key=ec.generate_private_key(ec.SECP256R1()))
    rim = sign_rim(document, p256.key, chain_of(p256, root))
    with pytest.raises(RimError, match="does not hold an ECDSA P-384 key"):
        verify_rim(rim, [root.cert], AT)


def test_an_rsa_signer_is_refused(document: bytes) -> None:
    root = issue("Test Root", None, ca=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from cryptography.hazmat.primitives import hashes

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "RSA Signer")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(AT - timedelta(days=30))
        .not_valid_after(AT + timedelta(days=30))
        .sign(root.key, hashes.SHA384())
    )
    signed = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    ).sign(etree.fromstring(document), key=key, cert=[cert, root.cert])
    with pytest.raises(RimError, match="does not hold an ECDSA P-384 key"):
        verify_rim(etree.tostring(signed), [root.cert], AT)


@pytest.mark.parametrize("link", ["signer", "l3", "ca", "root"])
def test_every_certificate_of_the_chain_must_be_valid_at_the_time(
    document: bytes, link: str
) -> None:
    start = AT - timedelta(days=400)

    def end(name: str) -> datetime:
        return AT - timedelta(days=1) if name == link else AT + timedelta(days=400)

    root = issue("Test Root", None, ca=True, not_before=start, not_after=end("root"))
    ca = issue("Test CA", root, ca=True, not_before=start, not_after=end("ca"))
    l3 = issue("Test L3", ca, ca=True, path_length=0, not_before=start, not_after=end("l3"))
    signer = issue("Test Signer", l3, ca=False, not_before=start, not_after=end("signer"))
    rim = sign_rim(document, signer.key, chain_of(signer, l3, ca, root))
    with pytest.raises(RimError, match="expired at"):
        verify_rim(rim, [root.cert], AT)
    verify_rim(rim, [root.cert], AT - timedelta(days=2))  # the same RIM, a time it held


def test_a_long_chain_is_cut_off(document: bytes) -> None:
    root = issue("Test Root", None, ca=True)
    links = [root]
    for number in range(9):
        links.append(issue(f"Test CA {number}", links[-1], ca=True))
    signer = issue("Test Signer", links[-1], ca=False)
    rim = sign_rim(document, signer.key, (signer.cert, *(link.cert for link in reversed(links))))
    with pytest.raises(RimError, match="longer than 8 certificates"):
        verify_rim(rim, [root.cert], AT)


def test_a_chain_embedded_out_of_order_is_still_walked(pki: RimPki, document: bytes) -> None:
    """Issuers are found by name and signature, not by position after the leaf."""
    rim = sign_rim(document, pki.signer.key, (pki.signer.cert, pki.ca.cert, pki.l3.cert))
    assert verify_rim(rim, [pki.root.cert], AT).signer_chain == pki.chain


def manifest(resources: str, meta: str = 'colloquialVersion="1.0" product="GH100"') -> bytes:
    return (
        f'<SoftwareIdentity xmlns="{SWID}" xmlns:h="http://www.w3.org/2001/04/xmlenc#sha384" '
        f'tagId="t"><Meta {meta}/><Payload>{resources}</Payload></SoftwareIdentity>'
    ).encode()


HASH = "ab" * 48


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (b"", "is empty"),
        (b"<SoftwareIdentity", "not well-formed XML"),
        (b"<SoftwareIdentity><Meta></SoftwareIdentity>", "not well-formed XML"),
        (b"<Other/>", "not a TCG SWID SoftwareIdentity"),
        (manifest(""), "no active measurement"),
        (manifest(f'<Resource type="Measurement" index="1" active="False" alternatives="1" h:Hash0="{HASH}"/>'), "no active measurement"),
        (manifest(f'<Resource type="Measurement" index="1" active="true" alternatives="1" h:Hash0="{HASH}"/>'), "not True or False"),
        (manifest(f'<Resource type="Measurement" index="1" active="True" alternatives="2" h:Hash0="{HASH}"/>'), "says 2 alternatives but carries Hash0"),
        (manifest(f'<Resource type="Measurement" index="1" active="True" alternatives="1" h:Hash0="{HASH}" h:Hash1="{HASH}"/>'), "carries Hash0, Hash1"),
        (manifest('<Resource type="Measurement" index="1" active="True" alternatives="1" h:Hash0="abcd"/>'), "not 48 hex bytes"),
        (manifest(f'<Resource type="Measurement" index="1" active="True" alternatives="1" Hash0="{HASH}"/>'), "outside the SHA-384 namespace"),
        (manifest(f'<Resource type="Measurement" index="-1" active="True" alternatives="1" h:Hash0="{HASH}"/>'), "not a decimal number"),
        (manifest(f'<Resource type="Measurement" index="254" active="True" alternatives="1" h:Hash0="{HASH}"/>'), "beyond the SPDM range"),
        (manifest(f'<Resource type="Measurement" index="1" active="True" alternatives="1" size="32" h:Hash0="{HASH}"/>'), "only SHA-384"),
        (manifest(f'<Resource type="File" index="1" active="True" alternatives="1" h:Hash0="{HASH}"/>'), "type 'File', not Measurement"),
        (manifest(2 * f'<Resource type="Measurement" index="1" active="True" alternatives="1" h:Hash0="{HASH}"/>'), "more than once"),
        (manifest(f'<Resource type="Measurement" index="1" active="True" alternatives="1" h:Hash0="{HASH}"/>', 'product="GH100"'), "Meta has no colloquialVersion"),
        (b"<a>" + b"x" * MAX_RIM_BYTES + b"</a>", "more than the 1048576 accepted"),
    ],
)  # fmt: skip
def test_malformed_manifests_are_refused(pki: RimPki, xml: bytes, reason: str) -> None:
    """Refused when read, and refused when validly signed: a signature vouches for the
    bytes, not for a manifest the verifier cannot read."""
    with pytest.raises(RimError, match=reason):
        parse_rim(xml)
    signable = "XML" not in reason and len(xml) < MAX_RIM_BYTES and xml != b""
    with pytest.raises(RimError, match=reason):
        verify_rim(pki.sign(xml) if signable else xml, [pki.root.cert], AT)


def test_an_unsigned_manifest_is_refused() -> None:
    xml = manifest(
        f'<Resource type="Measurement" index="1" active="True" alternatives="1" h:Hash0="{HASH}"/>'
    )
    assert parse_rim(xml).version == "1.0"
    with pytest.raises(RimError, match="0 XML signatures"):
        verify_rim(xml, [issue("Test Root", None, ca=True).cert], AT)
