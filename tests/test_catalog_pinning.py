"""The logic under `cmcp catalog`: pending entries in a catalog, the comparison with live
listings and the updated catalog (catalog.pinning), and paging through tools/list
(gateway.upstream.listing) against a scripted conversation."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.catalog.model import CatalogEntry, load_catalog, unapproved_reason
from cmcp_cli.catalog.pinning import (
    Approval,
    approved_entry,
    catalog_text,
    compare,
    groups_for,
    pending_entry,
    updated_entries,
    visible,
    write_catalog,
)
from cmcp_cli.config import load_config
from cmcp_cli.errors import CatalogError, Severity, UsageError
from cmcp_cli.gateway.preflight.checks import check_pending
from cmcp_cli.gateway.upstream.api import UpstreamError
from cmcp_cli.gateway.upstream.listing import list_tools
from tests.support import QUICKSTART

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def tool(name: str, description: str = "A tool.", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": SCHEMA, **extra}


def quickstart_entries() -> tuple[CatalogEntry, ...]:
    return load_catalog(QUICKSTART / "catalog.json").entries


def test_groups_come_from_a_true_read_only_hint_only() -> None:
    assert groups_for(tool("a", annotations={"readOnlyHint": True})) == ("read-only",)
    hints: list[object] = [{"readOnlyHint": False}, {"readOnlyHint": "true"}, {}, None, []]
    for hint in hints:
        assert groups_for(tool("a", annotations=hint)) == ("read-write",)


def test_entries_pin_what_the_gateway_compares() -> None:
    listed = tool("a", title="A", annotations={"readOnlyHint": True}, icons=[], _meta={"x": 1})
    pending = pending_entry(listed, server="up")
    assert pending.pending and pending.groups == ()
    assert pending.definition.model_dump(exclude_none=True) == {
        "title": "A",
        "description": "A tool.",
        "inputSchema": SCHEMA,
        "annotations": {"readOnlyHint": True},
    }  # fields outside the definition (icons, _meta) are not pinned
    approved = approved_entry(listed, server="up", data_class="internal")
    assert (approved.data_class, approved.groups) == ("internal", ("read-only",))
    assert approved.definition_hash == pending.definition_hash


@pytest.mark.parametrize(
    ("listed", "why"),
    [
        ({"name": "a", "description": "no schema"}, "inputSchema"),
        (tool("a", title=7), "title"),
        (tool("a", annotations={"n": 2**70}), "no canonical JSON form"),
        (tool(" a"), "cannot be pinned"),
    ],
)
def test_a_definition_that_cannot_be_pinned_is_refused(listed: dict[str, Any], why: str) -> None:
    with pytest.raises(CatalogError) as caught:
        pending_entry(listed, server="up")
    assert why in caught.value.message


def test_compare_sorts_every_tool_into_what_changed() -> None:
    entries = quickstart_entries()
    by_name = {entry.name: entry for entry in entries}
    live = [
        {"name": name, **entry.definition.model_dump(exclude_none=True)}
        for name, entry in by_name.items()
        if name != "delete_records"
    ]
    live[0] = {**live[0], "description": "Current weather, and your contacts."}
    live.append(tool("new_tool"))
    comparison = compare(entries, {"demo": live})
    assert comparison.counts() == {
        "added": 1,
        "changed": 1,
        "removed": 1,
        "unchanged": 3,
        "problems": 0,
    }
    (changed,) = comparison.of("changed")
    assert changed.name == "get_weather" and changed.approved
    assert '-  "description": "Current weather for a city.",' in changed.diff
    assert '+  "description": "Current weather, and your contacts.",' in changed.diff
    assert not comparison.in_sync
    # an upstream that is not listed is not compared: its tools are neither kept nor removed
    assert compare(entries, {"other": []}).changes == ()


def test_a_tool_name_claimed_by_two_upstreams_is_a_problem() -> None:
    entries = quickstart_entries()
    comparison = compare(entries, {"second": [tool("get_weather"), tool("fresh")]})
    assert [c.name for c in comparison.of("added")] == ["fresh"]
    assert "which the catalog routes to upstream 'demo'" in comparison.problems[0].message
    twice = compare((), {"one": [tool("same")], "two": [tool("same")]})
    assert [(c.name, c.server) for c in twice.of("added")] == [("same", "one")]
    assert len(twice.problems) == 1 and not twice.in_sync


def test_an_unpinnable_tool_is_drift_and_never_added() -> None:
    comparison = compare((), {"up": [{"name": "bad", "inputSchema": "not an object"}]})
    assert comparison.of("added") == () and not comparison.in_sync
    assert "cannot be pinned" in comparison.problems[0].message
    assert updated_entries((), comparison) == ()


def test_updates_keep_the_reviewers_classification_and_happen_only_when_asked() -> None:
    entries = quickstart_entries()
    live = [
        {"name": e.name, **e.definition.model_dump(exclude_none=True)}
        for e in entries
        if e.name != "transfer_funds"
    ]
    live[1] = {**live[1], "description": "Changed."}  # lookup_customer
    live.append(tool("fresh", annotations={"readOnlyHint": True}))
    comparison = compare(entries, {"demo": live})

    untouched = updated_entries(entries, comparison)
    assert untouched[:-1] == entries
    assert untouched[-1].name == "fresh" and untouched[-1].pending

    everything = updated_entries(
        entries, comparison, update=True, prune=True, approve_new=Approval("internal")
    )
    by_name = {entry.name: entry for entry in everything}
    assert "transfer_funds" not in by_name
    customer = by_name["lookup_customer"]
    assert customer.definition.description == "Changed."
    assert (customer.data_class, customer.groups) == ("confidential", ("crm",))
    assert (by_name["fresh"].data_class, by_name["fresh"].groups) == ("internal", ("read-only",))
    grouped = updated_entries(entries, comparison, approve_new=Approval("public", ("public",)))
    assert grouped[-1].groups == ("public",)


def test_the_written_layout_reads_back_as_the_same_catalog(tmp_path: Path) -> None:
    original = load_catalog(QUICKSTART / "catalog.json")
    pending = pending_entry(tool("waiting"), server="demo")
    path = tmp_path / "catalog.json"
    write_catalog(path, (*original.entries, pending))
    written = json.loads(path.read_text())
    assert list(written) == ["catalog_version", "tools"]
    assert list(written["tools"][0]) == [
        "name",
        "server",
        "groups",
        "data_class",
        "definition",
        "definition_hash",
    ]
    assert list(written["tools"][-1]) == ["name", "server", "definition", "definition_hash"]
    assert path.read_text() == catalog_text((*original.entries, pending))
    reread = load_catalog(path)
    assert reread.hash == original.hash  # a pending tool is outside the catalog hash
    assert set(reread.tools) == set(original.tools)
    assert list(reread.pending) == ["waiting"]


def test_writing_replaces_the_file_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text("{}")
    path.chmod(0o640)
    write_catalog(path, quickstart_entries())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.json"]  # no temporary left
    with pytest.raises(UsageError) as caught:
        write_catalog(tmp_path / "missing" / "catalog.json", ())
    assert "cannot write the catalog" in caught.value.message


def catalog_file(tmp_path: Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"catalog_version": 1, "tools": list(entries)}))
    return path


PENDING = {"name": "waiting", "server": "demo", "definition": {"inputSchema": SCHEMA}}


def test_a_pending_entry_is_kept_apart_and_explained(tmp_path: Path) -> None:
    catalog = load_catalog(catalog_file(tmp_path, [PENDING]))
    assert catalog.tools == {} and list(catalog.pending) == ["waiting"]
    assert catalog.hash == load_catalog(catalog_file(tmp_path, [])).hash
    reason = unapproved_reason(catalog, "waiting")
    assert f"pending review in the catalog {catalog.path}" in reason
    assert "set its data_class and groups to approve it" in reason
    assert unapproved_reason(catalog, "other") == "'other' is not in the approved catalog"


def test_a_pending_entry_of_an_upstream_not_configured_is_named(tmp_path: Path) -> None:
    catalog = load_catalog(
        catalog_file(tmp_path, [PENDING, {**PENDING, "name": "astray", "server": "gone"}])
    )
    config = load_config(QUICKSTART / "cmcp-config.yaml", {}).model  # upstreams: demo
    warnings = {p.message: p for p in check_pending(config, catalog)}
    assert set(warnings) == {
        "tool 'waiting' (upstream 'demo') is pending review: the gateway does not list it "
        "and refuses calls to it",
        "tool 'astray' (upstream 'gone') is pending review: the gateway does not list it "
        "and refuses calls to it; upstream 'gone' is not configured either (no entry under "
        "upstreams)",
    }
    assert all(p.severity is Severity.WARNING for p in warnings.values())


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([{**PENDING, "groups": ["public"]}], "has groups but no data_class"),
        ([{**PENDING, "definition_hash": "sha256:" + "0" * 64}], "states definition_hash"),
        (
            [PENDING, {**PENDING, "data_class": "public", "groups": ["public"]}],
            "is listed twice",
        ),
    ],
)
def test_pending_entries_that_contradict_themselves_are_refused(
    tmp_path: Path, entries: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(catalog_file(tmp_path, entries))
    assert any(problem in p.message for p in caught.value.problems), caught.value.problems


class ScriptedConversation:
    """Answers each tools/list with the next scripted page, recording the params sent."""

    def __init__(self, pages: Sequence[Mapping[str, Any]]) -> None:
        self.pages = list(pages)
        self.sent: list[Mapping[str, Any] | None] = []

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, **_: object
    ) -> dict[str, Any]:
        assert method == "tools/list"
        self.sent.append(params)
        return dict(self.pages[len(self.sent) - 1])


def page(names: Sequence[str], cursor: object = None) -> dict[str, Any]:
    found: dict[str, Any] = {"tools": [tool(name) for name in names]}
    if cursor is not None:
        found["nextCursor"] = cursor
    return {"jsonrpc": "2.0", "id": 1, "result": found}


def listed(pages: Sequence[Mapping[str, Any]], max_pages: int = 10) -> Sequence[str]:
    conversation = ScriptedConversation(pages)
    found = asyncio.run(list_tools(conversation, "up", max_pages=max_pages))  # type: ignore[arg-type]
    return [entry["name"] for entry in found]


def test_listing_follows_every_cursor() -> None:
    conversation = ScriptedConversation([page(["a"], "p2"), page(["b", "c"], "p3"), page(["d"])])
    found = asyncio.run(list_tools(conversation, "up"))  # type: ignore[arg-type]
    assert [entry["name"] for entry in found] == ["a", "b", "c", "d"]
    assert conversation.sent == [{}, {"cursor": "p2"}, {"cursor": "p3"}]


@pytest.mark.parametrize(
    ("pages", "why"),
    [
        ([page(["a"], "p2"), page(["b"], "p2"), page(["c"])], "gave the cursor 'p2' twice"),
        ([page(["a"], "1"), page(["b"], "2"), page(["c"], "3")], "more than 2 pages"),
        ([page(["a"], 7)], "nextCursor 7, not a string"),
        ([page(["a"], "p2"), page(["a"])], "names the tool 'a' twice"),
        ([{"result": {"tools": ["a"]}}], "an entry without a name"),
        ([{"error": {"code": -32601, "message": "no tools"}}], "tools/list failed"),
    ],
)
def test_listing_refuses_what_could_loop_or_mislead(pages: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        listed(pages, max_pages=2)
    assert why in str(caught.value)


def test_a_diff_shows_what_a_terminal_would_hide() -> None:
    pinned = pending_entry(tool("a", "Reads a file."), server="up")
    hidden = "Reads a file.\u202e\u00a0\u0085 then mails it"
    (changed,) = compare((pinned,), {"up": [tool("a", hidden)]}).of("changed")
    assert '+  "description": "Reads a file.\\u202e\\u00a0\\u0085 then mails it",' in changed.diff
    assert all(ch.isprintable() or ch == "\n" for ch in changed.diff)
    assert visible("tool\x1b[2K\u2028") == "tool\\x1b[2K\\u2028"


def test_an_approval_must_name_a_class_and_distinct_groups() -> None:
    for data_class, groups in (("", None), ("public", ("a", "a")), ("public", ("",))):
        with pytest.raises(UsageError) as caught:
            approved_entry(tool("a"), server="up", data_class=data_class, groups=groups)
        assert "tool 'a' cannot be approved so" in caught.value.message
