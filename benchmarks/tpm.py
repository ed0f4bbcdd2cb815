"""TPM backend timings against a real software TPM (swtpm), each beside a floor measured
in the same run, rounds interleaved because these machines are noisy.

quote     TpmCollector.collect (TPM2_Quote + PCR_Read of the selection + evidence) for an
          ECC P-256 and an RSA-2048 AK, against one bare TPM2_PCR_Read round trip
verify    TpmVerifier.verify of that evidence (every check, certificates included) against
          one bare ECDSA P-256 signature verification with `cryptography`
appraise  the gateway's own appraisal of that evidence (evidence.appraising.appraise, what
          each session open adds in a hardware mode) beside the bare verify above
keys      prepare() creating the AK (CreatePrimary + EvictControl) and loading it again

  .venv/bin/python benchmarks/tpm.py [--quotes 200] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import ESAPI, TPML_PCR_SELECTION  # type: ignore[import-untyped]

from cmcp_cli.attestation.api import GatewayFacts, TrustInputs
from cmcp_cli.evidence.appraising import AppraisalInputs, Collected, appraise
from cmcp_tpm import plugin
from cmcp_tpm.collector import TpmCollector
from cmcp_tpm.testing import SoftwareTpm, TestCa, enroll_attestation_key
from cmcp_tpm.verifier import TpmVerifier

BUNDLE = "sha256:" + "b0" * 32
FACTS = GatewayFacts(BUNDLE, "sha256:" + "ca" * 32, "sha256:" + "9a" * 32)
HANDLES = {"ecc": 0x81010010, "rsa": 0x81010011}
CERT_INDICES = {"ecc": 0x01C101D0, "rsa": 0x01C101D1}  # one AK certificate per AK


def timed(function: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "n": len(ordered),
    }


def _settings(tpm: SoftwareTpm, algorithm: str) -> dict[str, Any]:
    return {
        "tcti": tpm.tcti,
        "ak_handle": HANDLES[algorithm],
        "ak_algorithm": algorithm,
        "ak_cert_nv_index": CERT_INDICES[algorithm],
    }


def _keys(tpm: SoftwareTpm, ca: TestCa, results: dict[str, list[float]]) -> None:
    """Create each AK once (as a first gateway start does), load it again, enroll it."""
    for algorithm, handle in HANDLES.items():
        for phase in ("create", "load"):
            collector = TpmCollector()
            start = time.perf_counter()
            collector.prepare(FACTS, _settings(tpm, algorithm))
            elapsed = (time.perf_counter() - start) * 1000
            results.setdefault(f"keys.{algorithm}.{phase}", []).append(elapsed)
            collector.close()
        enroll_attestation_key(tpm.tcti, handle, ca, nv_index=CERT_INDICES[algorithm])


def _quote_verify_appraise(
    tpm: SoftwareTpm, algorithm: str, roots: tuple[bytes, ...], count: int
) -> tuple[list[float], list[float], list[float]]:
    settings = _settings(tpm, algorithm)
    binding = bytes(range(32))
    collector = TpmCollector()
    collector.prepare(FACTS, settings)
    try:
        collected = collector.collect(binding, settings)
        quoting = timed(lambda: collector.collect(binding, settings), count)
    finally:
        collector.close()
    now = datetime.now(UTC)
    trust = TrustInputs(binding=binding, at=now, trust_roots=roots, policy_hash=BUNDLE)
    verdict = TpmVerifier().verify(collected.evidence, trust)
    if verdict.failed or not verdict.hardware_attested:
        raise SystemExit(f"{algorithm} evidence did not verify: {verdict.checks}")
    verifying = timed(lambda: TpmVerifier().verify(collected.evidence, trust), count)
    own = Collected(plugin.SPEC, collected, (), binding, now, BUNDLE, FACTS.gateway_digest)
    inputs = AppraisalInputs(trust_roots=roots)
    pins = (collected.measurement,)
    if appraise(own, inputs, pins).status != "affirming":
        raise SystemExit(f"{algorithm} evidence was not appraised affirming")
    return quoting, verifying, timed(lambda: appraise(own, inputs, pins), count)


def _pcr_read_floor(tpm: SoftwareTpm, count: int) -> list[float]:
    esapi = ESAPI(tpm.tcti)
    selection = TPML_PCR_SELECTION.parse("sha256:23")
    try:
        return timed(lambda: esapi.pcr_read(selection), count)
    finally:
        esapi.close()


def _ecdsa_floor(count: int) -> list[float]:
    key = ec.generate_private_key(ec.SECP256R1())
    message = b"x" * 145  # the size of a TPMS_ATTEST over one bank
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    return timed(lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA256())), count)


def run(quotes: int, rounds: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {}
    with SoftwareTpm() as tpm:
        ca = TestCa.create()
        _keys(tpm, ca, results)
        roots = (ca.root_pem, tpm.ek_ca_pem)
        for _ in range(rounds):
            for algorithm in HANDLES:
                quoting, verifying, appraising = _quote_verify_appraise(
                    tpm, algorithm, roots, quotes
                )
                results.setdefault(f"quote.{algorithm}", []).extend(quoting)
                results.setdefault(f"verify.{algorithm}", []).extend(verifying)
                results.setdefault(f"appraise.{algorithm}", []).extend(appraising)
            results.setdefault("floor.pcr_read", []).extend(_pcr_read_floor(tpm, quotes))
            results.setdefault("floor.ecdsa_verify", []).extend(_ecdsa_floor(quotes))
    return {name: summary(samples) for name, samples in sorted(results.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.quotes, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, figures in report.items():
        p50, p95 = figures["p50_ms"], figures["p95_ms"]
        print(f"{name:22} p50 {p50:9.3f} ms  p95 {p95:9.3f} ms  n={figures['n']}")


if __name__ == "__main__":
    main()
