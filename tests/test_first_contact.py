"""`catalog_pinning: first-contact` with a config file: what validate-config says of it,
what the first start writes (with real SDK upstreams over loopback), and what it refuses
to pin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_cli.catalog.model import load_catalog
from cmcp_cli.gateway.preflight.report import check_config
from cmcp_cli.gateway.setup import first_contact
from cmcp_cli.gateway.setup.first_contact import pin_at_first_contact
from cmcp_cli.gateway.upstream.listing import list_configured_tools
from tests.gateway_support import Served, free_port, start_upstream, write_config
from tests.support import QUICKSTART, BundleFactory, run_cmcp

NO_ENV: dict[str, str] = {}


def first_contact_config(folder: Path, upstreams: dict[str, str], **more: Any) -> Path:
    path = write_config(
        folder,
        "http://127.0.0.1:9/mcp",
        catalog_path="pinned/catalog.json",  # relative: to the config file's folder
        catalog_pinning="first-contact",
        **more,
    )
    data = yaml.safe_load(path.read_text())
    data["upstreams"] = {
        name: {"transport": "streamable-http", "url": url} for name, url in upstreams.items()
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_config_locates_a_first_contact_data_class_that_cannot_apply(
    quickstart: Path,
) -> None:
    config = quickstart / "cmcp-config.yaml"
    text = config.read_text()
    config.write_text(text + "first_contact_data_class: public\n")
    result = run_cmcp("validate-config", "--config", config, "--json")
    assert result.returncode == 1
    (error,) = result.json()["errors"]
    assert error["line"] == len(text.splitlines()) + 1
    assert error["message"] == (
        "first_contact_data_class: is set, but catalog_pinning is explicit: no tool is "
        "approved at first contact"
    )
    # first-contact with an order that lacks the default class: the pinning key is at fault
    config.write_text(
        text.replace("./catalog.json", "./not-yet.json")
        + "catalog_pinning: first-contact\npolicy:\n  data_class_order: [low, high]\n"
    )
    result = run_cmcp("validate-config", "--config", config, "--json")
    assert result.returncode == 1
    report = result.json()
    messages = {e["message"]: e["line"] for e in report["errors"]}
    expected = (
        "catalog_pinning: tools pinned at first contact would get data class 'internal' (the "
        "default), which is not in the order (low < high)"
    )
    assert messages[expected] == len(text.splitlines()) + 1
    assert report["catalog_pinning"] == "first-contact"
    assert any("not-yet.json does not exist yet" in note for note in report["notes"])


def test_the_first_start_pins_every_tool_with_the_configured_class_and_keeps_a_pin_it_finds(
    tmp_path: Path, upstream: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = first_contact_config(
        tmp_path, {"demo": upstream.url}, first_contact_data_class="confidential"
    )
    report = check_config(config, NO_ENV)
    assert report.ok and report.catalog is None, report.problems
    assert report.notes and "pinned/catalog.json does not exist yet" in report.notes[0]
    pinned = pin_at_first_contact(report, NO_ENV)
    assert pinned is not None
    catalog = tmp_path / "pinned" / "catalog.json"
    assert (pinned.path, pinned.servers, pinned.data_class) == (
        catalog,
        {"demo": 5},
        "confidential",
    )
    again = check_config(config, NO_ENV)
    assert again.ok and again.catalog is not None
    assert {tool.data_class for tool in again.catalog.tools.values()} == {"confidential"}
    assert {tool.groups for tool in again.catalog.tools.values()} == {("read-write",)}
    # the upstream advertises the quickstart catalog's definitions: pinned to the same hashes
    quickstart = load_catalog(QUICKSTART / "catalog.json").tools
    assert {t.name: t.definition_hash for t in again.catalog.tools.values()} == {
        t.name: t.definition_hash for t in quickstart.values()
    }
    assert pin_at_first_contact(again, NO_ENV) is None  # a pinned file is the pin

    # another process pins in the moment between the check and the write: its file stays
    catalog.unlink()
    report = check_config(config, NO_ENV)

    async def listed_while_another_pins(*args: Any, **kwargs: Any) -> Any:
        found = await list_configured_tools(*args, **kwargs)
        catalog.write_text('{"catalog_version": 1, "tools": []}\n')
        return found

    monkeypatch.setattr(first_contact, "list_configured_tools", listed_while_another_pins)
    assert pin_at_first_contact(report, NO_ENV) is not None
    assert catalog.read_text() == '{"catalog_version": 1, "tools": []}\n'
    assert [p.name for p in catalog.parent.iterdir()] == ["catalog.json"]  # nothing left over


# A schema whose tools need an attribute the catalog does not give them.
STRICT_SCHEMA = """
entity Agent;
entity Tools;
entity Tool in [Tools] { server: String, data_class: String, owner: String };
action call_tool appliesTo { principal: [Agent], resource: [Tool] };
"""


def test_the_first_start_refuses_what_it_cannot_pin_and_writes_nothing(
    tmp_path: Path, upstream: Served, make_bundle: BundleFactory
) -> None:
    other = start_upstream(tmp_path)
    strict = make_bundle(
        {
            "tools.cedar": 'permit (principal, action, resource in Tools::"read-write");\n',
            "schema.cedarschema": STRICT_SCHEMA,
        }
    )
    try:
        cases: dict[str, tuple[dict[str, str], str, dict[str, Any]]] = {
            "twice": (
                {"a": upstream.url, "b": other.url},
                "the tool 'get_weather' is advertised by upstreams 'a' and 'b'; a call is "
                "routed by its name alone",
                {},
            ),
            "down": (
                {"demo": f"http://127.0.0.1:{free_port()}/mcp"},
                "the catalog cannot be pinned at first contact: could not list the tools of "
                "1 upstream",
                {},
            ),
            "unfit": (
                {"demo": upstream.url},
                "the tools pinned at first contact do not fit the policy bundle: the catalog's "
                "tools do not fit the bundle schema",
                {"policy_bundle_path": str(strict)},
            ),
        }
        for name, (upstreams, message, more) in cases.items():
            folder = tmp_path / name
            folder.mkdir()
            config = first_contact_config(folder, upstreams, **more)
            assert run_cmcp("validate-config", "--config", config).returncode == 0
            result = run_cmcp("start", "--config", config, env={"CMCP_DEV_MODE": "1"})
            assert result.returncode == 1, result.stderr
            assert message in " ".join(result.stderr.split())
            assert not (folder / "pinned").exists() or not any((folder / "pinned").iterdir())
            assert not (folder / "audit.db").exists()  # refused before anything was served
    finally:
        other.stop()
