"""What the operator staples into each GPU's evidence: the driver and VBIOS RIMs that
describe it and OCSP responses for the certificates involved.

RIM files (`rims`) are matched to GPUs by version: a driver RIM whose version is the GPU's
driver version, a VBIOS RIM whose version is the GPU's VBIOS version (when RIMs of several
chips share a version, the one whose product is the chip the GPU's certificate names). The
collector does not judge a RIM (its signature, signer or validity): the auditor's verifier
does that at the claim's time, against roots the auditor chooses. What it refuses are
mistakes that would make every claim unverifiable: a file that is not a GPU RIM, a GPU left
without its RIM when RIMs are configured, a RIM that describes no attested GPU.

OCSP response files (`ocsp`) are stapled to every GPU: the verifier picks the responses
whose CertID names a certificate of that GPU's chains and passes over the rest. With
`rim_url` or `ocsp_url`, what the files do not give is fetched once here
(`cmcp_gpucc.fetching`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
from cryptography import x509
from cryptography.x509 import ocsp

from cmcp_cli.attestation import toolkit
from cmcp_cli.attestation.api import ProviderError
from cmcp_gpucc.certificates import ChainError, chip_of
from cmcp_gpucc.evidence import MAX_OCSP, MAX_OCSP_RESPONSE, MAX_RIM, RIM_KINDS
from cmcp_gpucc.fetching import fetch_rim, fetch_statuses, make_client, rim_ids
from cmcp_gpucc.nvml_access import GpuIdentity
from cmcp_gpucc.rim import Rim, RimError, parse_rim
from cmcp_gpucc.settings import SECTION, GpuSettings

LABELS: Final = {"driver": "driver", "vbios": "VBIOS"}


@dataclass(frozen=True)
class Staples:
    """What one GPU's evidence carries beside the report: RIM XML by kind, OCSP DER."""

    rims: Mapping[str, bytes] = field(default_factory=dict)
    ocsp: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class RimFile:
    path: str  # where it came from, for messages: a file path or a URL
    xml: bytes
    rim: Rim


@dataclass(frozen=True)
class GpuFacts:
    """What choosing a GPU's RIMs needs: NVML's versions and the chip its chain names."""

    gpu: GpuIdentity
    driver_version: str
    chain: tuple[bytes, ...]  # DER, leaf first

    @property
    def label(self) -> str:
        return f"GPU {self.gpu.index} ({self.gpu.name})"

    @property
    def certs(self) -> tuple[x509.Certificate, ...]:
        return tuple(x509.load_der_x509_certificate(der) for der in self.chain)

    @property
    def chip(self) -> str | None:
        """The chip the device chain names ("GH100"): here only to choose among RIMs of one
        version; the verifier judges the chain and derives the architecture itself."""
        try:
            return chip_of(self.certs).name
        except (ChainError, ValueError, IndexError):
            return None

    def version(self, kind: str) -> str:
        return self.driver_version if kind == "driver" else self.gpu.vbios_version


def read_bounded(path: Path, limit: int, setting: str) -> bytes:
    hint = f"check the path and its permissions, or remove it from {setting}"
    return toolkit.read_bounded(path, limit, f"{SECTION}.{setting}", hint=hint)


def load_rim(source: str, xml: bytes) -> RimFile:
    """A GPU driver or VBIOS RIM, as its document states it; `ProviderError` otherwise."""
    try:
        rim = parse_rim(xml)
    except RimError as error:
        raise ProviderError(
            f"{SECTION}.rims: {source} is not a usable RIM: {error}",
            hint="give NVIDIA's driver and VBIOS RIMs (SWID XML from the RIM service)",
        ) from None
    if rim.kind is None:
        raise ProviderError(
            f"{SECTION}.rims: {source} is {rim.describe()}, not a GPU driver or VBIOS RIM",
            hint="an NVSwitch or other RIM does not describe a GPU; remove it",
        )
    return RimFile(source, xml, rim)


def load_ocsp(path: Path) -> bytes:
    der = read_bounded(path, MAX_OCSP_RESPONSE, "ocsp")
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as error:
        raise ProviderError(
            f"{SECTION}.ocsp: {path} is not a DER OCSP response ({error})",
            hint="save the responder's answer as it came (application/ocsp-response)",
        ) from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ProviderError(
            f"{SECTION}.ocsp: {path} is an OCSP error ({response.response_status.name}), not "
            "a certificate status",
            hint="ask the responder again and staple a successful response",
        )
    return der


def choose_rim(facts: GpuFacts, kind: str, rims: Sequence[RimFile]) -> RimFile | None:
    """The RIM of `kind` for this GPU among `rims`, or None; `ProviderError` when several
    fit and the chip does not tell them apart."""
    wanted = facts.version(kind).casefold()
    fitting = [f for f in rims if f.rim.kind == kind and f.rim.version.casefold() == wanted]
    if len(fitting) > 1:
        chip = facts.chip
        fitting = [f for f in fitting if chip is not None and f.rim.product == chip]
        if len(fitting) != 1:
            listed = ", ".join(f.path for f in rims if f.rim.kind == kind)
            raise ProviderError(
                f"{SECTION}.rims: several {LABELS[kind]} RIMs have version "
                f"{facts.version(kind)} and the chip of {facts.label} ({chip}) does not pick one: "
                f"{listed}",
                hint="keep one RIM per chip and version",
            )
    return fitting[0] if fitting else None


def rims_for(
    facts: Sequence[GpuFacts], rims: Sequence[RimFile], fetched: Mapping[tuple[int, str], RimFile]
) -> dict[int, dict[str, bytes]]:
    """Each GPU's driver and VBIOS RIM from `rims`, else from `fetched` (by index and kind);
    `ProviderError` names a GPU left without one, or a RIM no GPU uses."""
    chosen: dict[int, dict[str, bytes]] = {}
    used: set[str] = set()
    for gpu in facts:
        for kind in RIM_KINDS:
            found = choose_rim(gpu, kind, rims) or fetched.get((gpu.gpu.index, kind))
            if found is None:
                raise ProviderError(
                    f"{SECTION}.rims has no {LABELS[kind]} RIM for {gpu.label}, whose "
                    f"{LABELS[kind]} version is {gpu.version(kind)}",
                    hint=f"add the {LABELS[kind]} RIM of that version (NVIDIA's RIM service "
                    f"serves it), or set {SECTION}.rim_url to fetch it at start",
                )
            used.add(found.path)
            chosen.setdefault(gpu.gpu.index, {})[kind] = found.xml
    unused = [f for f in rims if f.path not in used]
    if unused:
        described = "; ".join(f"{f.path} ({f.rim.describe()})" for f in unused)
        raise ProviderError(
            f"{SECTION}.rims lists RIMs that describe no attested GPU: {described}",
            hint="remove them, or update them to the driver and VBIOS the GPUs run "
            "(nvidia-smi -q shows both versions)",
        )
    return chosen


def _fetch_rims(
    client: httpx.Client, base_url: str, facts: Sequence[GpuFacts], files: Sequence[RimFile],
    reports: Mapping[int, bytes],
) -> dict[tuple[int, str], RimFile]:  # fmt: skip
    """The RIMs the files do not give, from the RIM service, by GPU index and kind."""
    fetched: dict[tuple[int, str], RimFile] = {}
    for gpu in facts:
        missing = [kind for kind in RIM_KINDS if choose_rim(gpu, kind, files) is None]
        if not missing:
            continue
        ids = rim_ids(reports[gpu.gpu.index], gpu.certs)
        for kind in missing:
            source = base_url.rstrip("/") + "/" + ids[kind]
            found = load_rim(source, fetch_rim(client, base_url, ids[kind]))
            if choose_rim(gpu, kind, [found]) is None:
                raise ProviderError(
                    f"{SECTION}.rim_url: {source} is {found.rim.describe()}, not the "
                    f"{LABELS[kind]} RIM of {gpu.label} (version {gpu.version(kind)})",
                    hint="set rim_url to a service that serves NVIDIA's RIMs by id",
                )
            fetched[(gpu.gpu.index, kind)] = found
    return fetched


def gather_staples(
    settings: GpuSettings,
    gpus: Sequence[GpuIdentity],
    driver_version: str,
    chains: Mapping[int, tuple[bytes, ...]],
    reports: Mapping[int, bytes],
    *,
    client_factory: Callable[[], httpx.Client] | None = None,
) -> dict[int, Staples]:
    """What each GPU's evidence staples, by NVML index (see the module docstring).
    `reports` holds a report of each GPU, for naming its RIMs when `rim_url` is set."""
    facts = [GpuFacts(gpu, driver_version, chains[gpu.index]) for gpu in gpus]
    files = [load_rim(str(path), read_bounded(path, MAX_RIM, "rims")) for path in settings.rims]
    if len(settings.ocsp) > MAX_OCSP:
        raise ProviderError(f"{SECTION}.ocsp lists more than {MAX_OCSP} responses")
    stapled = tuple(load_ocsp(path) for path in settings.ocsp)
    online = settings.rim_url is not None or settings.ocsp_url is not None
    with (client_factory or make_client)() if online else nullcontext() as client:
        fetched: dict[tuple[int, str], RimFile] = {}
        if settings.rim_url is not None and client is not None:
            fetched = _fetch_rims(client, settings.rim_url, facts, files, reports)
        rims = rims_for(facts, files, fetched) if settings.staples_rims else {}
        staples: dict[int, Staples] = {}
        cache: dict[bytes, bytes] = {}
        for gpu in facts:
            index = gpu.gpu.index
            answers: tuple[bytes, ...] = ()
            if settings.ocsp_url is not None and client is not None:
                answers = fetch_statuses(
                    client, settings.ocsp_url, gpu.certs, rims.get(index, {}), cache
                )
            responses = stapled + tuple(a for a in answers if a not in stapled)
            if len(responses) > MAX_OCSP:
                raise ProviderError(
                    f"{gpu.label} would staple {len(responses)} OCSP responses, more than the "
                    f"{MAX_OCSP} a verifier accepts",
                    hint=f"remove files from {SECTION}.ocsp that ocsp_url fetches anyway",
                )
            staples[index] = Staples(rims.get(index, {}), responses)
    return staples
