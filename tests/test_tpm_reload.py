"""Policy reload on a TPM gateway: `cmcp start` with the tpm provider on swtpm, a signed
bundle taken on SIGHUP, and the claims of a session under each bundle verified as
hardware-attested through the real CLI against one PCR that holds both extends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.gateway_support import Served, start_gateway, write_config
from tests.reload_support import (
    bundle_hash,
    claims,
    quickstart_copy,
    reload_by_signal,
    rewrite,
    sign,
    write_keys,
)
from tests.support import QUICKSTART, run_cmcp
from tests.test_policy_reload import weather
from tests.tpm_support import EnrolledTpm, enrolled_tpm


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrolledTpm]:
    with enrolled_tpm(tmp_path_factory.mktemp("tpm")) as tpm:
        yield tpm


def test_sessions_under_each_bundle_verify_against_one_pcr_holding_both(
    tmp_path: Path, upstream: Served, enrolled: EnrolledTpm
) -> None:
    key, public = write_keys(tmp_path, "operator")
    bundle = quickstart_copy(tmp_path / "policies")
    first = bundle_hash(QUICKSTART / "policies")
    config = write_config(
        tmp_path,
        upstream.url,
        attestation={"provider": "tpm", "providers": {"tpm": enrolled.settings}},
        policy_bundle_path=str(bundle),
        policy={"reload": {"signing_keys": [str(public)]}},
    )
    served = start_gateway(config)

    async def scenario() -> tuple[str, str, str]:
        async with (
            streamable_http_client(served.url) as (read, write),
            ClientSession(read, write) as old,
        ):
            await old.initialize()
            second = sign(rewrite(bundle, version="1.1.0"), key)
            event = await asyncio.to_thread(reload_by_signal, served)
            assert (event["taken"], event["bundle_hash"]) == (True, second), event
            async with (
                streamable_http_client(served.url) as (read2, write2),
                ClientSession(read2, write2) as new,
            ):
                await new.initialize()
                new_decides = await weather(new)
            return second, await weather(old), new_decides

    try:
        second, old_decides, new_decides = asyncio.run(scenario())
    finally:
        assert served.stop() == 0, served.output()
    assert (old_decides, new_decides) == ("allow", "deny")
    by_bundle = {c["trace"]["policy"]["bundle_hash"]: c for c in claims(tmp_path)}
    assert set(by_bundle) == {first, second}
    logged = {
        bundle_hash: [e["data"] for e in c["gateway"]["attestation"]["evidence"]["event_log"]]
        for bundle_hash, c in by_bundle.items()
    }
    # the old session's evidence was collected before the reload, the new one's after it
    assert logged == {first: [first], second: [first, second]}
    for claim in by_bundle.values():
        path = tmp_path / "claims" / f"{claim['gateway']['session_id']}.claim.json"
        verified = run_cmcp(
            "verify", path, *enrolled.trust_args(), "--audit-log", tmp_path / "audit.db", "--json"
        )
        assert verified.returncode == 0, verified.stdout
        report = verified.json()
        assert report["hardware_attested"] is True
        policy = {c["name"]: c for c in report["checks"]}["tpm.eventlog.policy"]
        assert policy["status"] == "pass", policy
    # the quoted PCR moved with the second extend, and with it the measurement: this is
    # why validate-config refuses reload with a pinned TPM measurement
    measurements = {c["trace"]["runtime"]["measurement"] for c in by_bundle.values()}
    assert len(measurements) == 2
