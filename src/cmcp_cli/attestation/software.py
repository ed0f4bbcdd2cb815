"""The built-in software-only provider: same API, no hardware root of trust.

Its evidence carries the binding and the gateway digest so that the chain from key to
policy is recorded and checked the same way as on hardware, but nothing vouches for it:
its verdict is never `hardware_attested`, and `cmcp verify` exits 3 on it unless the
auditor passes `--allow-software`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cmcp_cli import __version__
from cmcp_cli.attestation.api import (
    Check,
    CheckStatus,
    Collector,
    Detection,
    Evidence,
    EvidenceVerdict,
    GatewayFacts,
    MeasureInputs,
    MeasureOption,
    Measurer,
    MeasureResult,
    ProviderError,
    ProviderSpec,
    TrustInputs,
    Verifier,
)
from cmcp_cli.attestation.hookspecs import provide
from cmcp_cli.attestation.measurement import installation_digest, wheel_digest
from cmcp_cli.claim.canonical import is_sha256_tagged

NAME = "software-only"
EVIDENCE_TYPE = "cmcp-software-v1"
PLATFORM = "software-only"
_MEMBERS = frozenset({"binding", "gateway_digest"})
_SHAPE, _BINDING, _DIGEST = "evidence.shape", "evidence.binding", "evidence.gateway_digest"


class SoftwareCollector(Collector):
    """Reads no settings (the software provider has none) and holds no device."""

    def __init__(self) -> None:
        self._gateway_digest: str | None = None

    def detect(self, settings: Mapping[str, Any]) -> Detection:  # noqa: ARG002
        return Detection(True, "always available; no hardware root of trust (dev mode only)")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        """Nothing to measure into: the software digest is computed, not recorded."""
        self._gateway_digest = facts.gateway_digest

    def close(self) -> None:
        """Nothing is held."""

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:  # noqa: ARG002
        digest = self._gateway_digest or installation_digest()
        return Evidence(
            evidence_type=EVIDENCE_TYPE,
            evidence={"binding": binding.hex(), "gateway_digest": digest},
            platform=PLATFORM,
            measurement=digest,
        )


class SoftwareVerifier(Verifier):
    """Checks what software evidence states (the binding, the gateway digest) against the
    claim; every check is reported, those whose input is malformed skipped naming the shape
    check that failed."""

    def verify(self, evidence: Mapping[str, Any], trust: TrustInputs) -> EvidenceVerdict:
        binding = evidence.get("binding") if isinstance(evidence, Mapping) else None
        digest = evidence.get("gateway_digest") if isinstance(evidence, Mapping) else None
        unknown = (
            sorted(map(str, set(evidence) - _MEMBERS)) if isinstance(evidence, Mapping) else []
        )
        sound = isinstance(binding, str) and isinstance(digest, str) and is_sha256_tagged(digest)
        if not sound or unknown:
            extra = f"; unknown members {', '.join(unknown)}" if unknown else ""
            shape = Check.failed(
                _SHAPE, f"software evidence needs binding and a sha256 gateway_digest{extra}"
            )
        else:
            shape = Check.passed(_SHAPE, "software evidence with binding and gateway digest")
        checks = [shape]
        if not isinstance(binding, str):
            checks.append(Check.skipped(_BINDING, f"no usable binding (see {_SHAPE})"))
        elif binding == trust.binding.hex():
            checks.append(Check.passed(_BINDING, "the evidence names the claim's binding"))
        else:
            checks.append(Check.failed(_BINDING, "the evidence names a different binding"))
        if isinstance(digest, str) and is_sha256_tagged(digest):
            checks.append(_gateway_digest(digest, trust.gateway_digest))
        else:
            checks.append(Check.skipped(_DIGEST, f"no usable gateway digest (see {_SHAPE})"))
        checks.append(
            Check.skipped(
                "evidence.hardware", "software mode: no hardware root of trust vouches for it"
            )
        )
        measurement = digest if shape.status is CheckStatus.PASS else None
        return EvidenceVerdict(tuple(checks), hardware_attested=False, measurement=measurement)


def _gateway_digest(stated: str, claimed: str | None) -> Check:
    name = _DIGEST
    if claimed is None:
        return Check.skipped(name, "no gateway digest of the claim was given to compare with")
    if stated != claimed:
        return Check.failed(
            name, f"the evidence states gateway digest {stated}, the claim {claimed}"
        )
    return Check.passed(name, "the evidence states the claim's gateway digest")


class SoftwareMeasurer(Measurer):
    """The software-mode measurement is the gateway digest of the installed cmcp_cli code.
    The policy bundle and catalog are not part of it: they are pinned on their own
    (`--policy-hash`, `--catalog-hash`) and bound to the key by the binding."""

    options: Sequence[MeasureOption] = (
        MeasureOption(
            "installation",
            "The cmcp_cli package directory or a cmcp-gateway wheel to measure "
            "(default: this installation).",
            metavar="PATH",
        ),
    )

    def measure(self, inputs: MeasureInputs) -> MeasureResult:
        given = inputs.values.get("installation", ())
        if given:
            source = given[0]
            digest = _digest_of(Path(source))
        else:
            source = "this installation"
            digest = installation_digest()
        details: dict[str, Any] = {"gateway_digest": digest, "installation": source}
        if inputs.facts is not None:
            details["bundle_hash"] = inputs.facts.bundle_hash
            details["catalog_hash"] = inputs.facts.catalog_hash
        return MeasureResult(digest, details)


def _digest_of(path: Path) -> str:
    if path.is_dir():
        if not (path / "__init__.py").is_file() or not (path / "gateway").is_dir():
            raise ProviderError(
                f"{path} is not a cmcp_cli package directory",
                hint="pass the cmcp_cli directory inside site-packages, or a cmcp-gateway wheel",
            )
        return installation_digest(path.resolve())
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            return wheel_digest(path)
        except ValueError as exc:
            raise ProviderError(f"{path}: {exc}", hint="pass a cmcp-gateway wheel") from None
    raise ProviderError(
        f"--installation {path}: neither a directory nor a wheel",
        hint="pass the cmcp_cli directory inside site-packages, or a cmcp-gateway wheel",
    )


SPEC = ProviderSpec(
    name=NAME,
    platform=PLATFORM,
    evidence_types=(EVIDENCE_TYPE,),
    collector=f"{__name__}:SoftwareCollector",
    verifier=f"{__name__}:SoftwareVerifier",
    measurer=f"{__name__}:SoftwareMeasurer",
    description="no TEE; for development with CMCP_DEV_MODE=1",
)


class SoftwarePlugin:
    """Registered by the plugin manager itself, like any entry point would be."""

    distribution = "cmcp-gateway"
    version = __version__

    cmcp_attestation_providers = staticmethod(provide(SPEC))
