"""The starter policy bundle `cmcp init` writes: the first policy a new user reads.

Its rules name the catalog groups that `catalog.pinning.groups_for` gives a tool from its
annotations (`{read_only}` and `{read_write}` below), so that every tool approved at init
is either allowed or held for an operator, and none is left without a rule by accident.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cmcp_cli.catalog.pinning import READ_ONLY, READ_WRITE

BUNDLE_VERSION = "1.0.0"
BUNDLE_AUTHOR = "cmcp init"

TOOLS_CEDAR_TEMPLATE = """\
// Tool calls. Written by `cmcp init`; edit it to make it yours, then check it with
//   cmcp validate-bundle --bundle-path policies
// (the gateway reads the bundle when it starts; docs/policy.md covers every rule form).
//
// Before Cedar is asked, the gateway refuses every call to a tool that is not in
// catalog.json, or whose definition no longer matches the one pinned there: unknown tools
// are denied whatever this file says. A tool the server adds later stays refused until
// you approve it in catalog.json (`cmcp catalog pin` adds it there for review). Cedar
// then denies every call no permit allows.
//
// catalog.json puts each tool in one group, from the annotations its server gave it at
// `cmcp init`: "{read_only}" when it declared readOnlyHint, "{read_write}" otherwise. That
// hint is the server's own word: read the tool's description, and move a tool to
// "{read_write}" in catalog.json (its "groups") when you do not trust it.

// Read-only tools run.
@id("read-only-tools")
permit (
  principal,
  action == Action::"call_tool",
  resource in Tools::"{read_only}"
);

// Every other tool is held for an operator's approval: the agent gets error -32041 with
// an approval_id; the operator approves it with the token in ./operator-token:
//   curl -X POST http://{listen}/approvals/<approval_id> \\
//     -H "Authorization: Bearer $(cat operator-token)" -H "Content-Type: application/json" \\
//     -d '{"decision": "approve"}'
// and the agent repeats the same call, which then runs once (docs/gateway.md).
//
// An approval lifts the hold and nothing else: the call runs under the permits that
// allow it. This permit is what an approval grants; the forbid below is what holds it.
@id("read-write-tools")
permit (
  principal,
  action == Action::"call_tool",
  resource in Tools::"{read_write}"
);

@id("read-write-tools-need-approval")
@escalate("this tool may change something; an operator approves each call")
forbid (
  principal,
  action == Action::"call_tool",
  resource in Tools::"{read_write}"
);
"""

MESSAGES_CEDAR_TEMPLATE = """\
// MCP messages other than tool calls are decided by Cedar too, each under its own action
// (docs/policy.md, "Governed messages"), and denied unless a permit names it.

// Agents see the tools: each upstream's listing shows the catalog's approved tools only,
// and every call is still decided by tools.cedar.
@id("list-tools")
permit (principal, action == Action::"list_tools", resource);

// Opt-ins: remove the leading // of a permit to allow what it names.
//
// Reading the upstreams' resources (resources/read), e-mail addresses masked:
//   @id("read-resources")
//   @redact("email")
//   permit (principal, action == Action::"read_resource", resource);
//
// Getting prompts (prompts/get):
//   @id("get-prompts")
//   permit (principal, action == Action::"get_prompt", resource);
//
// Letting the upstream use the agent's model (sampling/createMessage):
//   @id("sampling")
//   permit (principal, action == Action::"create_message", resource == Server::"{server}");
//
// Letting the upstream ask the user for input (elicitation/create):
//   @id("elicitation")
//   permit (principal, action == Action::"elicit", resource == Server::"{server}");
//
// Letting the upstream list the client's roots (roots/list):
//   @id("roots")
//   permit (principal, action == Action::"list_roots", resource == Server::"{server}");
"""


def manifest(authored_at: datetime) -> str:
    document = {
        "version": BUNDLE_VERSION,
        "authored_at": authored_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "author": BUNDLE_AUTHOR,
        "description": "Starter bundle: read-only tools run, every other tool waits for an "
        "operator's approval, tools outside the catalog are refused.",
    }
    return json.dumps(document, indent=2) + "\n"


def bundle_files(*, server: str, listen: str, authored_at: datetime) -> dict[str, str]:
    """The bundle's files by path relative to the bundle folder. `server` (the upstream's
    name) and `listen` (HOST:PORT) are validated before they get here: neither needs
    escaping in a Cedar comment or string."""
    return {
        "manifest.json": manifest(authored_at),
        "tools.cedar": _fill(
            TOOLS_CEDAR_TEMPLATE, listen=listen, read_only=READ_ONLY, read_write=READ_WRITE
        ),
        "messages.cedar": _fill(MESSAGES_CEDAR_TEMPLATE, server=server),
    }


def _fill(template: str, **values: str) -> str:
    """`template` with each `{key}` replaced (Cedar's own braces are left alone)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template
