"""`cmcp measure tpm`: measurements recomputed here with hashlib, one checked against a real
quote from swtpm, and every conflicting input refused with a ProviderError."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import GatewayFacts, MeasureInputs, MeasureResult, ProviderError
from cmcp_tpm.measurer import TpmMeasurer

BUNDLE_HEX = "5f0c" + "e1" * 30
BUNDLE = f"sha256:{BUNDLE_HEX}"
OTHER_BUNDLE = "sha256:" + "07" * 32
ZERO = bytes(32)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def extend(value: bytes, digest: bytes) -> bytes:
    return sha256(value + digest)


def measurement(values: Sequence[bytes]) -> str:
    return "sha256:" + sha256(b"".join(values)).hex()


def measure(
    facts: GatewayFacts | None = None, settings: Mapping[str, Any] | None = None, **options: Any
) -> MeasureResult:
    """Run the measurer with options as keyword arguments (`bundle_hash="..."`; lists for
    the repeatable ones)."""
    values = {
        name.replace("_", "-"): tuple(value) if isinstance(value, list) else (value,)
        for name, value in options.items()
    }
    inputs = MeasureInputs(values=values, facts=facts, settings=settings or {})
    return TpmMeasurer().measure(inputs)


GATEWAY_PCR23 = extend(ZERO, bytes.fromhex(BUNDLE_HEX))
GATEWAY_DEFAULT = measurement([ZERO] * 8 + [GATEWAY_PCR23])


def test_options_as_declared() -> None:
    options = {o.name: o for o in TpmMeasurer().options}
    assert list(options) == ["pcrs", "pcr", "bundle-hash", "event-log", "file", "bank"]
    assert [n for n, o in options.items() if o.multiple] == ["event-log", "file"]
    assert not any(o.required for o in options.values())
    assert options["file"].metavar == "PCR=PATH"


def test_gateway_default_is_zeros_and_the_bundle_extend() -> None:
    result = measure(bundle_hash=BUNDLE)

    assert result.measurement == GATEWAY_DEFAULT
    details = result.details
    json.dumps(details)  # the --json report is plain JSON
    assert details["bank"] == "sha256"
    assert details["selection"] == [0, 1, 2, 3, 4, 5, 6, 7, 23]
    assert details["pcrs"]["23"] == {
        "value": GATEWAY_PCR23.hex(),
        "events": 1,
        "state": "measured",
        "sources": [f"bundle-hash:{BUNDLE}"],
    }
    assert {details["pcrs"][str(i)]["state"] for i in range(8)} == {"unmeasured"}
    assert details["pcrs"]["0"]["value"] == ZERO.hex()
    assert details["sources"] == [{"kind": "bundle-hash", "pcr": 23, "value": BUNDLE}]


def test_bundle_hash_in_upper_case_and_explicit_defaults_agree() -> None:
    result = measure(bundle_hash=BUNDLE.upper().replace("SHA256", "sha256"), pcrs="0-7,23")
    assert result.measurement == GATEWAY_DEFAULT
    assert measure(bundle_hash=BUNDLE, pcr="23", bank="sha256").measurement == GATEWAY_DEFAULT


def test_pcr_16_defaults_to_boot_pcrs_and_16() -> None:
    result = measure(bundle_hash=BUNDLE, pcr="16")
    assert result.measurement == measurement([ZERO] * 8 + [GATEWAY_PCR23])
    assert result.details["selection"] == [0, 1, 2, 3, 4, 5, 6, 7, 16]


def test_dynamic_launch_pcrs_stay_at_ones_when_unmeasured() -> None:
    result = measure(bundle_hash=BUNDLE, pcrs="0,17,23")
    assert result.measurement == measurement([ZERO, b"\xff" * 32, GATEWAY_PCR23])
    assert result.details["pcrs"]["17"]["state"] == "unmeasured"


def test_measured_files_extend_in_order(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel image " * 1000)
    initrd.write_bytes(b"initrd")
    pcr9 = extend(extend(ZERO, sha256(kernel.read_bytes())), sha256(initrd.read_bytes()))

    result = measure(
        bundle_hash=BUNDLE, pcrs="0-9,23", file=[f"9={kernel}", f"9={initrd}", f"8={initrd}"]
    )

    pcr8 = extend(ZERO, sha256(b"initrd"))
    assert result.measurement == measurement([ZERO] * 8 + [pcr8, pcr9, GATEWAY_PCR23])
    assert result.details["pcrs"]["9"]["events"] == 2
    assert result.details["pcrs"]["9"]["sources"] == [f"file:{kernel}", f"file:{initrd}"]
    swapped = measure(bundle_hash=BUNDLE, pcrs="0-9,23", file=[f"9={initrd}", f"9={kernel}"])
    assert swapped.measurement != result.measurement


# ---------------------------------------------------------------- TCG firmware log


def tcg_log(events: Sequence[tuple[int, int, bytes]]) -> bytes:
    """A crypto-agile log with SHA-1 and SHA-256 banks; event digests hash the data."""
    spec = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 2)
    spec += struct.pack("<HHHH", 0x0004, 20, 0x000B, 32) + b"\x00"
    log = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for index, event_type, data in events:
        no_action = event_type == 3
        sha1 = bytes(20) if no_action else hashlib.sha1(data, usedforsecurity=False).digest()
        digest = ZERO if no_action else sha256(data)
        log += struct.pack("<III", index, event_type, 2)
        log += struct.pack("<H", 0x0004) + sha1 + struct.pack("<H", 0x000B) + digest
        log += struct.pack("<I", len(data)) + data
    return log


FIRMWARE = [
    (0, 3, b"StartupLocality\x00\x03"),
    (0, 8, b"1\x00.\x000\x00\x00\x00"),
    (1, 1, b"ACPI DATA"),
    *((i, 4, bytes(4)) for i in range(8)),
    (4, 0x80000007, b"Calling EFI Application from Boot Option"),
    (9, 0xD, b"grub.cfg"),
]


def firmware_values() -> list[bytes]:
    values = [ZERO] * 8
    values[0] = bytes(31) + b"\x03"  # the StartupLocality event's starting value
    for index, event_type, data in FIRMWARE:
        if event_type != 3 and index < 8:
            values[index] = extend(values[index], sha256(data))
    return values


def test_firmware_log_and_bundle(tmp_path: Path) -> None:
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(tcg_log(FIRMWARE))

    result = measure(bundle_hash=BUNDLE, event_log=[str(log)])

    assert result.measurement == measurement([*firmware_values(), GATEWAY_PCR23])
    details = result.details
    assert details["pcrs"]["0"]["events"] == 2
    assert details["pcrs"]["4"]["events"] == 2
    assert details["pcrs"]["4"]["sources"] == [f"event-log:{log}"]
    (source, bundle) = details["sources"]
    assert source == {
        "kind": "tcg-event-log",
        "path": str(log),
        "events": 12,
        "pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 9],
        "banks": ["sha1", "sha256"],
        "startup_locality": 3,
    }
    assert bundle["value"] == BUNDLE


def test_file_extends_after_the_log(tmp_path: Path) -> None:
    log = tmp_path / "log.bin"
    log.write_bytes(tcg_log(FIRMWARE) + b"\xff" * 100)
    shim = tmp_path / "shim.efi"
    shim.write_bytes(b"shim")

    result = measure(bundle_hash=BUNDLE, event_log=[str(log)], file=[f"4={shim}"])

    values = firmware_values()
    values[4] = extend(values[4], sha256(b"shim"))
    assert result.measurement == measurement([*values, GATEWAY_PCR23])
    assert result.details["pcrs"]["4"]["events"] == 3
    assert result.details["sources"][0]["padding_bytes"] == 100


# ---------------------------------------------------------------- cMCP JSON log

GATEWAY_EVENT = {
    "pcr": 23,
    "bank": "sha256",
    "digest": BUNDLE_HEX,
    "type": "cmcp-policy-bundle",
    "data": BUNDLE,
}
EVIDENCE = {
    "attest": "AA==",
    "pcrs": {"sha256": {str(i): "00" * 32 for i in range(8)} | {"23": GATEWAY_PCR23.hex()}},
    "event_log": [GATEWAY_EVENT],
}


def write_json(path: Path, document: object) -> str:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return str(path)


def test_evidence_event_log_gives_the_bundle(tmp_path: Path) -> None:
    evidence = write_json(tmp_path / "evidence.json", EVIDENCE)

    alone = measure(event_log=[evidence])
    confirmed = measure(event_log=[evidence], bundle_hash=BUNDLE)

    assert alone.measurement == confirmed.measurement == GATEWAY_DEFAULT
    assert alone.details["pcrs"]["23"]["sources"] == [f"event-log:{evidence}"]
    assert alone.details["sources"][0]["kind"] == "cmcp-event-log"
    assert alone.details["sources"][1] == {
        "kind": "bundle-hash",
        "pcr": 23,
        "value": BUNDLE,
        "recorded_in": evidence,
    }


def test_claim_file_event_log(tmp_path: Path) -> None:
    claim = {
        "cmcp_version": "1.0",
        "gateway": {"attestation": {"provider": "tpm", "evidence": EVIDENCE}},
        "signature": "x",
    }
    path = write_json(tmp_path / "claim.json", claim)
    assert measure(event_log=[path]).measurement == GATEWAY_DEFAULT


def test_firmware_log_with_gateway_evidence(tmp_path: Path) -> None:
    firmware = tmp_path / "bios.bin"
    firmware.write_bytes(tcg_log(FIRMWARE))
    evidence = write_json(tmp_path / "evidence.json", EVIDENCE)

    result = measure(event_log=[str(firmware), evidence])

    assert result.measurement == measurement([*firmware_values(), GATEWAY_PCR23])


# ---------------------------------------------------------------- with --config

FACTS = GatewayFacts(bundle_hash=BUNDLE, catalog_hash="sha256:" + "11" * 32, gateway_digest="")


def test_config_supplies_bundle_and_settings() -> None:
    assert measure(facts=FACTS).measurement == GATEWAY_DEFAULT
    result = measure(facts=FACTS, settings={"pcr": 16, "pcrs": [0, 16]})
    assert result.measurement == measurement([ZERO, GATEWAY_PCR23])
    assert measure(facts=FACTS, bundle_hash=BUNDLE, pcr="23").measurement == GATEWAY_DEFAULT


@pytest.mark.parametrize(
    ("options", "settings", "problem"),
    [
        ({"bundle_hash": OTHER_BUNDLE}, {}, "--bundle-hash .* differs from the --config"),
        ({"pcr": "16"}, {}, r"--pcr 16 differs from attestation.providers.tpm.pcr \(23\)"),
        ({"pcrs": "0-8,23"}, {}, "--pcrs 0-8,23 differs from attestation.providers.tpm.pcrs"),
        ({}, {"pcr": 5}, "attestation.providers.tpm.pcr is 5"),
    ],
)
def test_options_contradicting_config(
    options: dict[str, Any], settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ProviderError, match=problem) as caught:
        measure(facts=FACTS, settings=settings, **options)
    assert caught.value.hint


# ---------------------------------------------------------------- conflicts


def test_firmware_log_feeding_the_gateway_pcr(tmp_path: Path) -> None:
    log = tmp_path / "bios.bin"
    log.write_bytes(tcg_log([*FIRMWARE, (23, 0xD, b"something")]))
    with pytest.raises(ProviderError, match=r"--event-log .* firmware log with events for PCR 23"):
        measure(bundle_hash=BUNDLE, event_log=[str(log)])
    # With the gateway on PCR 16 the firmware's PCR 23 is simply not quoted.
    result = measure(bundle_hash=BUNDLE, event_log=[str(log)], pcr="16")
    assert result.measurement == measurement([*firmware_values(), GATEWAY_PCR23])


def test_evidence_disagreeing_with_bundle_hash(tmp_path: Path) -> None:
    evidence = write_json(tmp_path / "evidence.json", EVIDENCE)
    with pytest.raises(ProviderError, match="disagrees with --bundle-hash") as caught:
        measure(event_log=[evidence], bundle_hash=OTHER_BUNDLE)
    assert BUNDLE in caught.value.message
    assert caught.value.hint
    assert "drop --bundle-hash" in caught.value.hint
    wrong_digest = {**EVIDENCE, "event_log": [{**GATEWAY_EVENT, "digest": "07" * 32}]}
    with pytest.raises(ProviderError, match="disagrees with --bundle-hash"):
        measure(event_log=[write_json(tmp_path / "e2.json", wrong_digest)], bundle_hash=BUNDLE)


def test_evidence_for_another_gateway_pcr(tmp_path: Path) -> None:
    on_16 = {**EVIDENCE, "event_log": [{**GATEWAY_EVENT, "pcr": 16}]}
    path = write_json(tmp_path / "evidence.json", on_16)
    with pytest.raises(ProviderError, match="into PCR 16, but --pcr is 23") as caught:
        measure(event_log=[path])
    assert caught.value.hint == "pass --pcr 16, the gateway's `pcr` setting"
    assert measure(event_log=[path], pcr="16").measurement == measurement(
        [ZERO] * 8 + [GATEWAY_PCR23]
    )


def test_two_logs_for_one_pcr(tmp_path: Path) -> None:
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(tcg_log(FIRMWARE))
    second.write_bytes(tcg_log(FIRMWARE[1:3]))
    with pytest.raises(ProviderError, match="PCR 0 is fed by both --event-log"):
        measure(bundle_hash=BUNDLE, event_log=[str(first), str(second)])


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "nothing says what the gateway extends into PCR 23"),
        ({"pcrs": "0-7"}, "--pcr 23 is not in --pcrs 0-7"),
        ({"pcr": "16", "pcrs": "0-7,23"}, "--pcr 16 is not in --pcrs 0-7,23"),
        ({"pcr": "7"}, "--pcr 7: the gateway's PCR must be 16 or 23"),
        ({"pcr": "x"}, "--pcr x"),
        ({"pcrs": "0-30"}, "--pcrs 0-30"),
        ({"bundle_hash": "sha256:abc"}, "not sha256:<64 hex digits>"),
        ({"bundle_hash": "sha384:" + "00" * 48}, "not sha256:<64 hex digits>"),
        ({"bank": "sha1"}, "--bank sha1"),
        ({"bank": "sha384"}, "sha256 bank only"),
        ({"pcr": ["16", "23"]}, "--pcr is given 2 times"),
        ({"file": ["8=/nonexistent"]}, "PCR 8 is not in the quoted selection"),
        ({"file": ["23=/etc/hostname"]}, "PCR 23 is the gateway's --pcr"),
        ({"file": ["/etc/hostname"]}, "not PCR=PATH"),
        ({"file": ["4=/nonexistent/file"]}, "cannot read /nonexistent/file"),
        ({"event_log": ["/nonexistent/log"]}, "--event-log /nonexistent/log: cannot read"),
    ],
)
def test_unusable_options(options: dict[str, Any], problem: str) -> None:
    if "bundle_hash" not in options and options:
        options = {"bundle_hash": BUNDLE, **options}
    with pytest.raises(ProviderError, match=problem) as caught:
        measure(**options)
    assert caught.value.hint


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the log is empty"),
        (b"not a log at all", "Spec ID Event03"),
        (b"[]", "records no extends"),
        (b'{"event_log": [{"pcr": 23}]}', r"event_log\[0\].bank"),
    ],
)
def test_unusable_event_logs(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "log"
    path.write_bytes(content)
    with pytest.raises(ProviderError, match=problem) as caught:
        measure(bundle_hash=BUNDLE, event_log=[str(path)])
    assert str(path) in caught.value.message


def test_log_without_the_bank(tmp_path: Path) -> None:
    only_sha1 = [{**GATEWAY_EVENT, "pcr": 4, "bank": "sha1", "digest": "00" * 20}]
    path = write_json(tmp_path / "log.json", only_sha1)
    with pytest.raises(ProviderError, match="records no sha256 digests"):
        measure(bundle_hash=BUNDLE, event_log=[path])


# ---------------------------------------------------------------- a real quote


def free_port_pair() -> int:
    """A port P with P+1 also free: the swtpm TCTI talks to P and its control channel P+1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        with contextlib.suppress(OSError), socket.socket() as control:
            control.bind(("127.0.0.1", port + 1))
            return port
    pytest.fail("no free pair of loopback ports")


@contextlib.contextmanager
def swtpm(state: Path) -> Iterator[str]:
    port = free_port_pair()
    process = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--server",
            f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--tpmstate",
            f"dir={state}",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("swtpm did not start")
                time.sleep(0.05)
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        process.terminate()
        process.wait(timeout=5)


def quote_pcr_digest(attest: bytes) -> bytes:
    """pcrDigest of a marshaled TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE."""
    magic, kind = struct.unpack_from(">IH", attest)
    assert (magic, kind) == (0xFF544347, 0x8018)
    offset = 6
    for _ in range(2):  # qualifiedSigner, extraData
        (size,) = struct.unpack_from(">H", attest, offset)
        offset += 2 + size
    offset += 17 + 8  # clockInfo, firmwareVersion
    (count,) = struct.unpack_from(">I", attest, offset)
    offset += 4
    for _ in range(count):
        offset += 2 + 1 + attest[offset + 2]  # hash, sizeofSelect, pcrSelect
    (size,) = struct.unpack_from(">H", attest, offset)
    assert offset + 2 + size == len(attest)
    return attest[offset + 2 :]


@pytest.mark.skipif(
    shutil.which("swtpm") is None or shutil.which("tpm2_quote") is None,
    reason="swtpm and tpm2-tools are needed for a real quote",
)
def test_measurement_equals_a_real_quote(tmp_path: Path) -> None:
    """What the gateway does on a fresh TPM (reset PCR 23, extend the bundle hash, quote
    0-7,23 with an endorsement-hierarchy signing key), done by tpm2-tools on swtpm."""
    state = tmp_path / "state"
    state.mkdir()
    with swtpm(state) as tcti:

        def tpm2(*args: str) -> None:
            subprocess.run(
                [args[0], "-T", tcti, *args[1:]], check=True, capture_output=True, timeout=20
            )

        tpm2("tpm2_pcrreset", "23")
        tpm2("tpm2_pcrextend", f"23:sha256={BUNDLE_HEX}")
        tpm2(
            "tpm2_createprimary",
            "-C",
            "e",
            "-G",
            "ecc256:ecdsa-sha256:null",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
            "-c",
            str(tmp_path / "ak.ctx"),
        )
        tpm2(
            "tpm2_quote",
            "-c",
            str(tmp_path / "ak.ctx"),
            "-l",
            "sha256:0,1,2,3,4,5,6,7,23",
            "-q",
            "00" * 32,
            "-m",
            str(tmp_path / "attest"),
            "-s",
            str(tmp_path / "sig"),
        )
    pcr_digest = quote_pcr_digest((tmp_path / "attest").read_bytes())

    assert measure(bundle_hash=BUNDLE).measurement == f"sha256:{pcr_digest.hex()}"
