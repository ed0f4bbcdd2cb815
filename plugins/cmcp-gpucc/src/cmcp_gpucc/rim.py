"""NVIDIA reference integrity manifests (RIMs): the golden measurements of a GPU driver or
VBIOS, as TCG SWID tags signed with an enveloped XML-DSig.

A RIM is a `SoftwareIdentity` whose `Meta@colloquialVersion` is the driver or VBIOS version
and whose `Payload` lists `Resource type="Measurement"` elements: an `index`, whether it is
`active`, and `alternatives` SHA-384 values `Hash0..HashN` (namespace xmlenc#sha384). RIM
index i is appraised against SPDM measurement block i+1; only active indices count.

`verify_rim` trusts nothing the document says before its signature holds:
* The XML is parsed without DTDs, entities or network access; a document with a DOCTYPE is
  refused outright.
* The signer chain embedded in `KeyInfo` is walked by us to a pinned CoRIM signing root, each
  certificate valid at the claim's time (`rim_chain.walk`).
* signxml checks the signature with exactly that walked leaf (`x509_cert=`), so it cannot
  take another key from the document, at the claim's time (`verification_time=`), allowing
  only ECDSA-SHA384 and a SHA-384 reference digest, exactly one reference, enveloped at the
  top level.
* The reference must be `URI=""`, the whole document, and the manifest is read from the bytes
  signxml digested (`VerifyResult.signed_xml`), never from the document as received, so
  content outside what was signed cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type information
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidDigest, InvalidSignature, SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from cmcp_cli.attestation.toolkit import as_utc
from cmcp_cli.claim.canonical import canonical_bytes
from cmcp_gpucc.rim_chain import ChainError, describe, walk

SWID: Final = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS: Final = "http://www.w3.org/2001/04/xmlenc#sha384"
DSIG: Final = "http://www.w3.org/2000/09/xmldsig#"
# The largest RIM accepted; NVIDIA's are 20-30 KB.
MAX_RIM_BYTES: Final = 1 << 20
# SPDM measurement indices run 1..254 (255 asks for all), so RIM indices run 0..253.
MAX_INDEX: Final = 253
MAX_ALTERNATIVES: Final = 64
DIGEST_SIZE: Final = 48
_DECIMAL: Final = re.compile(r"(0|[1-9][0-9]{0,8})")
_HEX: Final = re.compile(r"[0-9a-fA-F]{96}")
_HASH_ATTRIBUTE: Final = re.compile(r"Hash(0|[1-9][0-9]*)")
# How NVIDIA writes the versions a GPU RIM describes: a driver as decimal fields
# (550.144.03, 575.32), a VBIOS as five hex bytes (96.00.5E.00.01).
_DRIVER_VERSION: Final = re.compile(r"[0-9]+(\.[0-9]+){1,3}")
_VBIOS_VERSION: Final = re.compile(r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}")
# What the digest of a RIM set (`rim_set_measurement`) is computed over; a new layout gets a
# new number.
MEASUREMENT_LAYOUT: Final = 1


class RimError(ValueError):
    """The RIM is unusable: malformed, not signed by a trusted NVIDIA signer at the claim's
    time, or not a manifest this verifier understands. The message says which."""


@dataclass(frozen=True, slots=True)
class RimMeasurement:
    index: int  # RIM index i, appraised against SPDM measurement block i+1
    active: bool
    alternatives: tuple[bytes, ...]  # each 48 bytes (SHA-384); any one of them matches


@dataclass(frozen=True, slots=True)
class Rim:
    tag_id: str
    name: str  # SoftwareIdentity@name, e.g. GH100
    product: str  # Meta@product
    edition: str  # Meta@edition: GPU (driver), VBIOS, SWITCH ...
    version: str  # Meta@colloquialVersion: the driver or VBIOS version the RIM describes
    measurements: tuple[RimMeasurement, ...]  # by index, ascending
    signer_chain: tuple[x509.Certificate, ...] = ()  # leaf to pinned root, set by verify_rim

    @property
    def active(self) -> tuple[RimMeasurement, ...]:
        return tuple(m for m in self.measurements if m.active)

    @property
    def kind(self) -> str | None:
        """ "vbios" or "driver" for a GPU RIM, as the shape of its version says (a RIM
        does not state it otherwise); None for another edition (an NVSwitch's) or shape."""
        if self.edition != "GPU":
            return None
        if _VBIOS_VERSION.fullmatch(self.version):
            return "vbios"
        if _DRIVER_VERSION.fullmatch(self.version):
            return "driver"
        return None

    def describe(self) -> str:
        return f"{self.product or self.name} {self.edition} RIM {self.version}"


def _parser() -> etree.XMLParser:
    # No DTD is loaded and no entity expanded or fetched; huge_tree stays off so lxml's
    # depth and size limits apply.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )


def _document(xml: bytes) -> etree._Element:
    if not isinstance(xml, bytes):
        raise RimError(f"The RIM must be the bytes of an XML document, not {type(xml).__name__}.")
    if not xml:
        raise RimError("The RIM is empty: give the XML document NVIDIA publishes.")
    if len(xml) > MAX_RIM_BYTES:
        raise RimError(f"The RIM is {len(xml)} bytes, more than the {MAX_RIM_BYTES} accepted.")
    try:
        root = etree.fromstring(xml, _parser())
    except etree.XMLSyntaxError as error:
        raise RimError(f"The RIM is not well-formed XML ({error}).") from None
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise RimError(
            "The RIM has a DOCTYPE: NVIDIA's RIMs declare no DTD or entities, and one that "
            "does is refused."
        )
    return root


def _text_attribute(element: etree._Element, name: str, what: str) -> str:
    value = element.get(name)
    if value is None or not value.strip():
        raise RimError(f"The RIM's {what} has no {name}.")
    return str(value).strip()


def _decimal(element: etree._Element, name: str, what: str) -> int:
    text = _text_attribute(element, name, what)
    if _DECIMAL.fullmatch(text) is None:
        raise RimError(f"The RIM's {what} has {name}={text!r}, not a decimal number.")
    return int(text)


def _measurement(resource: etree._Element, position: int) -> RimMeasurement:
    what = f"measurement resource {position}"
    kind = resource.get("type")
    if kind != "Measurement":
        raise RimError(f"The RIM's payload resource {position} has type {kind!r}, not Measurement.")
    index = _decimal(resource, "index", what)
    what = f"measurement index {index}"
    if index > MAX_INDEX:
        raise RimError(f"The RIM's {what} is beyond the SPDM range 0..{MAX_INDEX}.")
    active = resource.get("active")
    if active not in ("True", "False"):
        raise RimError(f"The RIM's {what} has active={active!r}, not True or False.")
    count = _decimal(resource, "alternatives", what)
    if not 1 <= count <= MAX_ALTERNATIVES:
        raise RimError(f"The RIM's {what} has {count} alternatives, not 1..{MAX_ALTERNATIVES}.")
    size = resource.get("size")
    if size is not None and size != str(DIGEST_SIZE):
        raise RimError(f"The RIM's {what} has size {size!r}: only SHA-384 (48) is understood.")
    hashes: dict[int, bytes] = {}
    for attribute, value in resource.attrib.items():
        qualified = etree.QName(attribute)
        number = _HASH_ATTRIBUTE.fullmatch(qualified.localname)
        if number is None:
            continue
        if qualified.namespace != SHA384_NS:
            raise RimError(
                f"The RIM's {what} has {qualified.localname} outside the SHA-384 namespace "
                f"({qualified.namespace}): only SHA-384 measurements are understood."
            )
        if _HEX.fullmatch(value) is None:
            raise RimError(f"The RIM's {what} has {qualified.localname} that is not 48 hex bytes.")
        hashes[int(number.group(1))] = bytes.fromhex(value)
    if sorted(hashes) != list(range(count)):
        raise RimError(
            f"The RIM's {what} says {count} alternatives but carries "
            f"{', '.join(f'Hash{n}' for n in sorted(hashes)) or 'no hash'}."
        )
    return RimMeasurement(index, active == "True", tuple(hashes[n] for n in range(count)))


def _single(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.findall(f"{{{SWID}}}{tag}")
    if len(found) != 1:
        raise RimError(f"The RIM has {len(found)} {tag} elements, not exactly one.")
    return found[0]


def _manifest(root: etree._Element) -> Rim:
    if root.tag != f"{{{SWID}}}SoftwareIdentity":
        raise RimError(
            f"The RIM's root element is {root.tag}, not a TCG SWID SoftwareIdentity: it is not "
            "a reference integrity manifest."
        )
    meta = _single(root, "Meta")
    payload = _single(root, "Payload")
    measurements = [
        _measurement(resource, position)
        for position, resource in enumerate(payload.findall(f"{{{SWID}}}Resource"), 1)
    ]
    others = [child for child in payload if child.tag != f"{{{SWID}}}Resource"]
    if any(isinstance(child.tag, str) for child in others):
        raise RimError("The RIM's payload holds elements other than Resource.")
    indices = [m.index for m in measurements]
    if len(set(indices)) != len(indices):
        raise RimError("The RIM lists a measurement index more than once.")
    if not any(m.active for m in measurements):
        raise RimError("The RIM has no active measurement, so it would pin nothing.")
    return Rim(
        tag_id=_text_attribute(root, "tagId", "SoftwareIdentity"),
        name=root.get("name", "").strip(),
        product=meta.get("product", "").strip(),
        edition=meta.get("edition", "").strip(),
        version=_text_attribute(meta, "colloquialVersion", "Meta"),
        measurements=tuple(sorted(measurements, key=lambda m: m.index)),
    )


def parse_rim(xml: bytes) -> Rim:
    """The manifest as the document states it, WITHOUT checking its signature: for showing
    what a file is. Judge a RIM with `verify_rim`. `RimError` when it is unusable."""
    return _manifest(_document(xml))


def _embedded_chain(root: etree._Element) -> tuple[etree._Element, list[x509.Certificate]]:
    signatures = root.findall(f".//{{{DSIG}}}Signature")
    if len(signatures) != 1 or signatures[0].getparent() is not root:
        raise RimError(
            f"The RIM has {len(signatures)} XML signatures; exactly one, enveloped in the "
            "SoftwareIdentity element, is accepted."
        )
    signature = signatures[0]
    references = signature.findall(f"{{{DSIG}}}SignedInfo/{{{DSIG}}}Reference")
    if len(references) != 1 or references[0].get("URI") != "":
        raise RimError(
            "The RIM's signature does not have exactly one reference to the whole document "
            '(URI=""), so it would not cover the manifest.'
        )
    path = f"{{{DSIG}}}KeyInfo/{{{DSIG}}}X509Data/{{{DSIG}}}X509Certificate"
    certs: list[x509.Certificate] = []
    for position, element in enumerate(signature.findall(path), 1):
        try:
            der = base64.b64decode("".join((element.text or "").split()), validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError) as error:
            raise RimError(
                f"Embedded certificate {position} of the RIM signature does not parse "
                f"({str(error).rstrip('.')})."
            ) from None
    if not certs:
        raise RimError("The RIM's signature embeds no X509Certificate to identify its signer.")
    return signature, certs


def signature_config(at: datetime) -> SignatureConfiguration:
    """What signxml must find: an X.509 signature enveloped in the root element, one
    reference, ECDSA-SHA384 over SHA-384 digests, certificates judged at `at`."""
    return SignatureConfiguration(
        require_x509=True,
        location="./",  # enveloped directly in the root element
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=as_utc(at),
    )


def verify_rim(xml: bytes, roots: Sequence[x509.Certificate], at: datetime) -> Rim:
    """The manifest, once its XML-DSig holds with a signer that chains to one of `roots`,
    every certificate valid at `at` (the claim's time). `RimError` says why it does not."""
    root = _document(xml)
    _, embedded = _embedded_chain(root)
    try:
        chain = walk(embedded, roots, at)
    except ChainError as error:
        raise RimError(str(error)) from None
    signer = describe(chain[0])
    try:
        result = XMLVerifier().verify(
            xml, x509_cert=chain[0], expect_config=signature_config(at), parser=_parser()
        )
    except InvalidDigest:
        raise RimError(
            "The RIM's reference digest does not match its content: the manifest was changed "
            f"after {signer} signed it."
        ) from None
    except InvalidSignature:
        raise RimError(
            f"The RIM's XML signature does not verify with the key of {signer}: its SignedInfo "
            "was not signed by that key."
        ) from None
    except (SignXMLException, ValueError, TypeError, KeyError) as error:
        raise RimError(f"The RIM's XML signature cannot be checked: {error}") from None
    if isinstance(result, list) or result.signed_xml is None:
        raise RimError("The RIM's signed content is not one XML document.")
    manifest = _manifest(result.signed_xml)
    return Rim(
        tag_id=manifest.tag_id,
        name=manifest.name,
        product=manifest.product,
        edition=manifest.edition,
        version=manifest.version,
        measurements=manifest.measurements,
        signer_chain=chain,
    )


def mismatching_indices(rim: Rim, blocks: Mapping[int, bytes]) -> tuple[int, ...]:
    """The active RIM indices i whose SPDM measurement block i+1 (`blocks`, by SPDM index) is
    missing or none of the index's alternatives, ascending."""
    return tuple(m.index for m in rim.active if blocks.get(m.index + 1) not in set(m.alternatives))


def _golden(rim: Rim) -> dict[str, object]:
    return {
        "product": rim.product,
        "version": rim.version,
        "measurements": {str(m.index): [a.hex() for a in m.alternatives] for m in rim.active},
    }


def rim_set_measurement(driver: Rim, vbios: Rim) -> str:
    """The one string that names the golden values of a driver and VBIOS RIM pair:
    `sha384:` over the canonical JSON (RFC 8785) of
    `{"nvidia_gpu_rims": 1, "driver": G, "vbios": G}`, where G is
    `{"product", "version", "measurements": {"<index>": ["<hex>", ...]}}` over the active
    indices, alternatives in the RIM's order. Signatures, signers, inactive indices and XML
    formatting are left out, so a re-signed RIM with the same golden values keeps it."""
    document = {
        "nvidia_gpu_rims": MEASUREMENT_LAYOUT,
        "driver": _golden(driver),
        "vbios": _golden(vbios),
    }
    return "sha384:" + hashlib.sha384(canonical_bytes(document)).hexdigest()
