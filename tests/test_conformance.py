"""The official MCP conformance suite, both protocol revisions, against an SDK upstream
directly and through `cmcp start` in front of it: every scenario that passes directly must
pass through the gateway.

The gateway runs in dev mode with a bundle that permits every action and a catalog pinned
to exactly what the upstream advertises, so a scenario lost here is lost by the relay, not
by policy. Each edition's runs (a revision and a suite version) are printed side by side and
written as JSON to `.conformance/report/<edition>.json` (see docs/conformance.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from cmcp_cli.catalog.model import DEFINITION_FIELDS
from tests.conformance import suite
from tests.gateway_support import Served, free_port, start_gateway, start_process, write_config
from tests.support import MANIFEST, REPO

pytestmark = pytest.mark.conformance

SERVER = "fixture"
REPORT = Path(os.environ.get("CMCP_CONFORMANCE_REPORT", suite.INSTALL / "report"))
# Every Cedar action of the request model, permitted: the run measures the relay alone.
ACTIONS = (
    "call_tool",
    "list_tools",
    "read_resource",
    "get_prompt",
    "create_message",
    "elicit",
    "list_roots",
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def upstream(work: Path) -> Iterator[Served]:
    """The fixture server (official SDK, event store) on loopback."""
    port = free_port()
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")])
    )
    command = [sys.executable, "-m", "tests.conformance.fixture_server", "--port", str(port)]
    served = start_process(command, port, work / "fixture.log", environment)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def gateway(work: Path, upstream: Served) -> Iterator[Served]:
    """`cmcp start` (dev mode) in front of the fixture: permit-all bundle, pinned catalog."""
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps(asyncio.run(pinned_catalog(upstream.url)), indent=2))
    bundle = work / "permit-all"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
    listed = ", ".join(f'Action::"{action}"' for action in ACTIONS)
    (bundle / "permit-all.cedar").write_text(
        f'@id("permit-all")\npermit (principal, action in [{listed}], resource);\n'
    )
    config = write_config(
        work, upstream.url, policy_bundle_path=str(bundle), catalog_path=str(catalog)
    )
    document = yaml.safe_load(config.read_text())
    document["upstreams"] = {SERVER: {"transport": "streamable-http", "url": upstream.url}}
    config.write_text(yaml.safe_dump(document))
    served = start_gateway(config)
    yield served
    served.stop()


async def pinned_catalog(url: str) -> dict[str, Any]:
    """A catalog approving exactly the tools `url` advertises, as it advertises them."""
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = (await session.list_tools()).tools
    entries = []
    for tool in tools:
        listed = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
        definition = {key: listed[key] for key in DEFINITION_FIELDS if key in listed}
        entries.append(
            {"name": tool.name, "server": SERVER, "data_class": "public", "definition": definition}
        )
    return {"catalog_version": 1, "tools": entries}


@pytest.mark.parametrize("edition", suite.EDITIONS, ids=lambda edition: edition.label)
def test_every_scenario_passing_directly_passes_through_the_gateway(
    edition: suite.Edition,
    work: Path,
    upstream: Served,
    gateway: Served,
    record_property: Callable[[str, object], None],
) -> None:
    installed = suite.locate(edition)
    label, revision = edition.label, edition.revision
    runs = work / label
    direct = suite.run(installed, upstream.url, runs / "direct", runs / "direct.log")
    through = suite.run(installed, gateway.url, runs / "gateway", runs / "gateway.log")
    lost = suite.lost(direct, through)

    REPORT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(REPORT / label, ignore_errors=True)
    shutil.copytree(runs, REPORT / label)  # the suite's own checks.json, per scenario
    lost_failures = {
        name: through[name].failures if name in through else ["not run"] for name in lost
    }
    # passing both ways, but a check succeeding directly does not succeed through the gateway
    weaker = suite.degraded(direct, through)
    report = {
        "edition": label,
        "revision": revision,
        "suite": f"@modelcontextprotocol/conformance@{installed.version}",
        "direct": {
            "passed": suite.passed(direct),
            "scenarios": {n: r.as_json() for n, r in direct.items()},
        },
        "gateway": {
            "passed": suite.passed(through),
            "scenarios": {n: r.as_json() for n, r in through.items()},
        },
        "lost": lost_failures,
        "degraded": weaker,
    }
    (REPORT / f"{label}.json").write_text(json.dumps(report, indent=2) + "\n")
    shown = [suite.table(f"{revision} (suite {installed.version})", direct, through)]
    shown += [f"  degraded {name}: {' | '.join(checks)}" for name, checks in weaker.items()]
    shown.append(f"(report: {REPORT / f'{label}.json'})")
    record_property(suite.TABLE_PROPERTY, "\n".join(shown))

    failing_directly = [name for name, verdict in direct.items() if not verdict.passed]
    if failing_directly:
        reasons = "\n".join(f"- {n}: {' | '.join(direct[n].failures)}" for n in failing_directly)
        pytest.fail(
            f"the fixture upstream itself fails {len(failing_directly)} scenarios ({label}); "
            f"fix tests/conformance/fixture_server.py:\n{reasons}",
            pytrace=False,
        )
    problems = [
        f"- {name}: LOST: " + " | ".join(lost_failures[name]).replace("\n", " ") for name in lost
    ] + [f"- {name}: degraded: " + " | ".join(checks) for name, checks in weaker.items()]
    if problems:
        pytest.fail(
            f"through the gateway ({label}; gateway log: {gateway.log}), {len(lost)} of "
            f"{len(direct)} scenarios passing directly fail, and {len(weaker)} passing both ways "
            "lose a check that succeeds directly:\n" + "\n".join(problems),
            pytrace=False,
        )
