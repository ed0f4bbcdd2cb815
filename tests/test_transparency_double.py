"""The transparency service double as a real process over real TLS: both protocols over
one log, its registration policy, and every mode, each checked with scitt-cose's own
verifier and the core's receipt functions rather than the double's code."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from scitt_cose import verify_receipt

from cmcp_cli.claim.anchor import anchor_id
from cmcp_cli.claim.keys import jwk_thumbprint
from cmcp_cli.claim.model import sign_claim
from cmcp_cli.claim.receipt import ReceiptError, inclusion_holds, receipt_document
from cmcp_cli.testing.transparency import DRAFT09_PENDING_POLLS, MODES, RunningTransparency
from cmcp_cli.testing.transparency_log import DECOY_LEAF
from tests.transparency_support import (
    TIMEOUT,
    AnchoredClaim,
    anchored_claim,
    client,
    leaf,
    sibling_record,
    statement,
)

COSE = {"content-type": "application/cose"}
JSON_TYPE = {"content-type": "application/json"}
PRODUCER = "cmcp-gateway/test"
SLOW_SECONDS = 3.0


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTransparency]:
    with RunningTransparency.start(
        tmp_path_factory.mktemp("ts"), slow_seconds=SLOW_SECONDS
    ) as running:
        yield running


@pytest.fixture
def service(double: RunningTransparency) -> Iterator[RunningTransparency]:
    double.set_mode("up")
    yield double
    double.set_mode("up")


@pytest.fixture(scope="module")
def anchored(
    double: RunningTransparency, tmp_path_factory: pytest.TempPathFactory
) -> AnchoredClaim:
    return anchored_claim(tmp_path_factory.mktemp("claim"), double.url)


def another(anchored: AnchoredClaim, double: RunningTransparency, tag: str) -> dict[str, Any]:
    return sibling_record(anchored, double.url, tag)


def log_key(double: RunningTransparency) -> bytes:
    return double.log_key.read_bytes()


def kid(record: dict[str, Any]) -> str:
    return jwk_thumbprint(record["cnf"]["jwk"])


def registry_receipt(body: dict[str, Any]) -> bytes:
    """The COSE receipt of a registry answer (`receipt`: base64url without padding)."""
    text = str(body["receipt"])
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def registry_proof_holds(record: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether a registry answer's `entry` and `proof` on their own put the record's leaf
    under the entry's root (registry-anchor-v1's shape, as trace-verify reads it)."""
    entry, proof = body["entry"], body["proof"]
    return inclusion_holds(
        leaf(record),
        proof["leaf_index"],
        entry["leaf_count"],
        proof["audit_path"],
        entry["merkle_root"],
    )


def register(
    double: RunningTransparency, anchored: AnchoredClaim, record: dict[str, Any] | None = None
) -> httpx.Response:
    record = record or anchored.record
    body = statement(record, anchored.private_pem, kid=kid(record))
    with client(double.ca_file) as http:
        return http.post(f"{double.url}/entries", content=body, headers=COSE)


def test_scrapi_registration_answers_a_receipt_scitt_cose_verifies(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    record = anchored.record
    answer = register(service, anchored)
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"] == "application/cose"
    assert answer.headers["location"] == record["transparency"]
    result = verify_receipt(
        answer.content, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service)
    )
    assert result.ok, result.errors
    assert result.issuer == service.url and result.subject == record["subject"]
    assert abs(result.iat - time.time()) < 60
    assert cbor2.loads(cbor2.loads(answer.content).value[0])[4] == jwk_thumbprint(
        _log_jwk(service)
    ).encode("ascii")
    # the record's URI resolves here, to its receipt
    with client(service.ca_file) as http:
        fetched = http.get(record["transparency"])
    assert fetched.status_code == 200
    assert verify_receipt(
        fetched.content, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service)
    ).ok
    # and the core accepts it as the receipt of this record
    document = receipt_document(
        protocol="scrapi", record=record, cose_receipt=fetched.content,
        log_key_pem=log_key(service), ts="2026-12-02T18:00:00Z", producer=PRODUCER,
    )  # fmt: skip
    assert document["anchor_id"] == anchor_id(record)


def test_the_registry_protocol_is_the_same_log(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    record = anchored.record
    assert register(service, anchored).status_code == 201
    with client(service.ca_file) as http:
        answer = http.post(f"{service.url}/records", content=json.dumps(record), headers=JSON_TYPE)
        again = http.get(f"{service.url}/records/{anchor_id(record)}")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"entry", "proof", "receipt"}
    entry, proof = body["entry"], body["proof"]
    assert set(entry) == {"ts", "merkle_root", "leaf_count", "producer", "batch_id"}
    assert entry["ts"].endswith("Z")
    # the same record by either protocol is one leaf, proven by the registry's own shape
    assert registry_proof_holds(record, body)
    cose = registry_receipt(body)
    result = verify_receipt(cose, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service))
    assert result.ok, result.errors
    assert (result.leaf_index, result.tree_size) == (proof["leaf_index"], entry["leaf_count"])
    assert f"sha256:{result.root}" == entry["merkle_root"]
    assert again.status_code == 200 and again.json()["proof"] == proof


def test_records_are_appended_and_each_keeps_its_leaf(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    first = register(service, anchored)
    second_record = another(anchored, service, "restricted")
    second = register(service, anchored, second_record)
    assert first.status_code == 201 and second.status_code == 201, second.text
    key = log_key(service)
    one = verify_receipt(
        first.content, leaf_entry_hex=leaf(anchored.record), log_public_key_pem=key
    )
    two = verify_receipt(second.content, leaf_entry_hex=leaf(second_record), log_public_key_pem=key)
    assert one.ok and two.ok
    assert two.leaf_index > one.leaf_index and two.tree_size > one.tree_size
    # registering the first again is its same entry, in the grown tree
    again = register(service, anchored)
    three = verify_receipt(
        again.content, leaf_entry_hex=leaf(anchored.record), log_public_key_pem=key
    )
    assert three.leaf_index == one.leaf_index and three.tree_size == two.tree_size


def _log_jwk(double: RunningTransparency) -> dict[str, str]:
    public = load_pem_public_key(double.log_key.read_bytes())
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
    }


def refusal(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"], answer.json()


def test_registration_refuses_what_the_policy_does_not_admit(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    record = anchored.record
    url = service.url
    other_key = anchored_claim(service.folder / "other", url, session_id="sess-other")
    elsewhere = json.loads(json.dumps(anchored.claim))
    elsewhere["trace"]["transparency"] = "https://elsewhere.example/entries/" + anchor_id(record)
    moved = dict(sign_claim(elsewhere, anchored.key)["trace"])
    resigned = dict(record, signature=other_key.record["signature"])
    fresh = another(anchored, service, "secret")  # a body not registered yet
    unsigned = {k: v for k, v in fresh.items() if k != "signature"}
    floats = dict(record, iat=1.5)
    with client(service.ca_file) as http:

        def scrapi(body: bytes, headers: dict[str, str] = COSE) -> httpx.Response:
            return http.post(f"{url}/entries", content=body, headers=headers)

        def registry(document: Any) -> httpx.Response:
            return http.post(f"{url}/records", content=json.dumps(document), headers=JSON_TYPE)

        good = statement(record, anchored.private_pem, kid=kid(record))
        refusal(scrapi(good, JSON_TYPE), 415, "application/cose")
        refusal(scrapi(b"not cbor"), 400, "not CBOR")
        refusal(scrapi(statement(moved, anchored.private_pem, kid=kid(moved))), 400, "transparency")
        # a statement by another key than the record's own
        refusal(scrapi(statement(record, other_key.private_pem, kid=kid(record))), 400, "cnf.jwk")
        refusal(
            scrapi(statement(record, anchored.private_pem, kid="not-the-thumbprint")), 400, "kid"
        )
        pretty = json.dumps(record, indent=1).encode()
        refusal(
            scrapi(statement(record, anchored.private_pem, kid=kid(record), payload=pretty)),
            400,
            "canonical",
        )
        refusal(
            scrapi(statement(record, anchored.private_pem, kid=kid(record), issuer="spiffe://x/y")),
            400,
            "iss",
        )
        refusal(
            scrapi(
                statement(record, anchored.private_pem, kid=kid(record), content_type="text/plain")
            ),
            400,
            "content type",
        )
        refusal(registry(moved), 400, "transparency")
        refusal(registry(unsigned), 400, "signature")
        refusal(registry(floats), 400, "profile")
        refusal(registry([record]), 400, "JSON object")
        assert registry(record).status_code == 201
        # the same body under another signature, valid or not: its anchor id is taken
        refusal(registry(resigned), 409, "another record")
        zeros = base64.urlsafe_b64encode(b"\x00" * 64).rstrip(b"=").decode()
        refusal(registry(dict(record, signature=zeros)), 409, "another record")
        # a new body with a signature that does not hold
        refusal(registry(dict(fresh, signature=zeros)), 400, "signature")
        refusal(
            http.post(f"{url}/records", content=b"x" * (1024 * 1024 + 1), headers=JSON_TYPE),
            413,
            "over",
        )
        refusal(http.get(f"{url}/entries/{'0' * 64}"), 404, "no entry")
        refusal(http.get(f"{url}/records/{'0' * 64}"), 404, "no record")
        refusal(http.get(f"{url}/operations/op-999"), 404, "no operation")


def test_down_and_error_answer_every_route_with_their_status(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    for mode, status in (("down", 503), ("error", 500)):
        service.set_mode(mode)
        assert register(service, anchored).status_code == status
        with client(service.ca_file) as http:
            assert http.get(anchored.record["transparency"]).status_code == status
            posted = http.post(
                f"{service.url}/records", content=json.dumps(anchored.record), headers=JSON_TYPE
            )
            assert posted.status_code == status
    logged = [r for r in service.requests() if r["mode"] in ("down", "error")]
    assert {(r["mode"], r["status"]) for r in logged} == {("down", 503), ("error", 500)}


def test_slow_answers_after_the_client_gave_up_but_registers(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    record = another(anchored, service, "slow-mode")
    service.set_mode("slow")
    body = statement(record, anchored.private_pem, kid=kid(record))
    impatient = httpx.Timeout(TIMEOUT, read=0.5)  # the answer is what it waits too long for
    with client(service.ca_file, timeout=impatient) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{service.url}/entries", content=body, headers=COSE)
        assert time.monotonic() - started < SLOW_SECONDS  # it gave up before the answer
    service.set_mode("up")
    with client(service.ca_file) as http:
        fetched = http.get(record["transparency"])
    assert fetched.status_code == 200  # registered before the answer was held back
    assert verify_receipt(
        fetched.content, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service)
    ).ok


def test_async_registration_is_an_operation_to_poll(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    record = another(anchored, service, "async-mode")
    service.set_mode("async")
    answer = register(service, anchored, record)
    assert answer.status_code == 202, answer.text
    location = answer.headers["location"]
    assert location.startswith(f"{service.url}/operations/")
    with client(service.ca_file) as http:
        assert http.get(location).json()["status"] == "running"
        done = http.get(location).json()
        assert done["status"] == "succeeded" and done["entryID"] == anchor_id(record)
        receipt = http.get(f"{service.url}/entries/{done['entryID']}")
    assert receipt.headers["content-type"] == "application/cose"
    assert verify_receipt(
        receipt.content, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service)
    ).ok
    # a refused registration is an operation that fails, naming why
    moved = dict(record, transparency="https://elsewhere.example/entries/x")
    refused = register(service, anchored, moved)
    assert refused.status_code == 202
    with client(service.ca_file) as http:
        assert http.get(refused.headers["location"]).json()["status"] == "running"
        failed = http.get(refused.headers["location"]).json()
    assert failed["status"] == "failed" and "transparency" in failed["error"]["detail"]


@pytest.mark.parametrize("mode", ["draft09", "draft09-relative"])
def test_draft09_registration_is_a_303_to_the_entry_then_302_until_200(
    service: RunningTransparency, anchored: AnchoredClaim, mode: str
) -> None:
    """draft-ietf-scitt-scrapi-09: 303 See Other to the entry, whose GET answers 302 Found
    (pointing at itself) a bounded number of times, then 200 with the receipt as RFC 9943's
    `application/scitt-receipt+cose`; RFC 9943's statement media type is accepted too."""
    record = another(anchored, service, f"{mode}-mode")
    service.set_mode(mode)
    body = statement(record, anchored.private_pem, kid=kid(record))
    with client(service.ca_file) as http:
        answer = http.post(
            f"{service.url}/entries",
            content=body,
            headers={"content-type": "application/scitt-statement+cose"},
        )
        assert answer.status_code == 303, answer.text
        entry = f"/entries/{anchor_id(record)}"
        assert answer.headers["location"] == (
            entry if mode == "draft09-relative" else f"{service.url}{entry}"
        )
        assert answer.content == b""
        polls = [http.get(f"{service.url}{entry}") for _ in range(DRAFT09_PENDING_POLLS + 2)]
    assert [p.status_code for p in polls] == [302] * DRAFT09_PENDING_POLLS + [200, 200]
    assert {p.headers["location"] for p in polls} == {f"{service.url}{entry}"}
    for done in polls[-2:]:
        assert done.headers["content-type"] == "application/scitt-receipt+cose"
        result = verify_receipt(
            done.content, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service)
        )
        assert result.ok, result.errors
    # a refused registration is refused at once, naming why
    moved = dict(record, transparency="https://elsewhere.example/entries/x")
    refusal(register(service, anchored, moved), 400, "transparency")


@pytest.mark.parametrize("mode", ["wrong-key", "tamper", "other-leaf"])
def test_a_bad_receipt_mode_fails_scitt_cose_and_the_core(
    service: RunningTransparency, anchored: AnchoredClaim, mode: str
) -> None:
    record = anchored.record
    service.set_mode(mode)
    key = log_key(service)
    answers = [register(service, anchored)]
    with client(service.ca_file) as http:
        answers.append(http.get(record["transparency"]))
        registry = http.post(
            f"{service.url}/records", content=json.dumps(record), headers=JSON_TYPE
        )
    answers.append(httpx.Response(200, content=registry_receipt(registry.json())))
    for answer in answers:
        assert answer.status_code in (200, 201)
        result = verify_receipt(answer.content, leaf_entry_hex=leaf(record), log_public_key_pem=key)
        assert not result.ok
        with pytest.raises(ReceiptError):
            receipt_document(
                protocol="scrapi", record=record, cose_receipt=answer.content,
                log_key_pem=key, ts="2026-12-02T18:00:00Z", producer=PRODUCER,
            )  # fmt: skip
        if mode == "other-leaf":  # genuinely the log's, for a leaf that is no record's
            assert verify_receipt(
                answer.content, leaf_entry_hex=DECOY_LEAF.hex(), log_public_key_pem=key
            ).ok
        else:  # the right shape for this leaf; the signature is what fails
            assert result.failed_at == "signature"
    service.set_mode("up")
    assert verify_receipt(
        register(service, anchored).content, leaf_entry_hex=leaf(record), log_public_key_pem=key
    ).ok


def test_disagree_gives_an_entry_and_proof_the_log_did_not_sign(
    service: RunningTransparency, anchored: AnchoredClaim
) -> None:
    record = anchored.record
    assert register(service, anchored).status_code == 201
    service.set_mode("disagree")
    with client(service.ca_file) as http:
        body = http.post(
            f"{service.url}/records", content=json.dumps(record), headers=JSON_TYPE
        ).json()
    entry = body["entry"]
    # on its own the entry and proof hold, as trace-verify would find ...
    assert registry_proof_holds(record, body)
    # ... but the log signed another root, of another size
    cose = registry_receipt(body)
    result = verify_receipt(cose, leaf_entry_hex=leaf(record), log_public_key_pem=log_key(service))
    assert result.ok
    assert f"sha256:{result.root}" != entry["merkle_root"]
    assert result.tree_size != entry["leaf_count"]


def test_modes_are_the_documented_ones(service: RunningTransparency) -> None:
    assert set(MODES) == {
        "up", "async", "draft09", "draft09-relative", "own-ids", "down", "error", "slow",
        "wrong-key", "tamper", "other-leaf", "disagree",
    }  # fmt: skip
    with pytest.raises(ValueError, match="refused mode"):
        service.set_mode("sideways")


def test_only_a_client_trusting_its_ca_reaches_it(service: RunningTransparency) -> None:
    with client(None) as http, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        http.get(f"{service.url}/entries/{'0' * 64}")
    plain = service.url.replace("https://", "http://")
    with httpx.Client(trust_env=False, timeout=5) as http, pytest.raises(httpx.HTTPError):
        http.get(f"{plain}/entries/{'0' * 64}")
    with client(service.ca_file) as http:
        assert http.get(f"https://localhost:{service.port}/entries/{'0' * 64}").status_code == 404


def test_a_restart_on_its_folder_and_port_keeps_its_log_and_keys(
    tmp_path: Path, anchored: AnchoredClaim
) -> None:
    folder = tmp_path / "restart"
    with RunningTransparency.start(folder) as first:
        url, port = first.url, first.port
        ca, key = first.ca_file.read_bytes(), first.log_key.read_bytes()
        claim = anchored_claim(tmp_path / "claim", url)
        record = claim.record
        assert register(first, claim).status_code == 201
    with RunningTransparency.start(folder, port=port) as second:
        assert second.url == url
        assert second.ca_file.read_bytes() == ca and second.log_key.read_bytes() == key
        with client(second.ca_file) as http:
            fetched = http.get(record["transparency"])
        assert fetched.status_code == 200
        result = verify_receipt(
            fetched.content, leaf_entry_hex=leaf(record), log_public_key_pem=key
        )
        assert result.ok and (result.leaf_index, result.tree_size) == (0, 1)


def test_the_command_prints_its_base_url(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cmcp_cli.testing.transparency", "--state-dir", str(tmp_path)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            ready = json.loads((tmp_path / "transparency.json").read_text())
            assert line == ready["url"] == f"https://127.0.0.1:{ready['port']}"
        finally:
            process.terminate()
            process.wait(timeout=10)
