"""Decisions: allow, deny by forbid, default deny, groups, context, annotations, errors, schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.errors import BundleError, CatalogError
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import Authorizer, CompiledBundle, compile_bundle
from cmcp_cli.policy.request import ToolResource, tool_call_request
from tests.support import QUICKSTART, BundleFactory

CREDIT_RISK = "spiffe://trust.example.org/agent/credit-risk"
REFERENCE_POLICY = (
    'permit(principal == Agent::"spiffe://trust.example.org/agent/credit-risk", action ==\n'
    'Action::"call_tool", resource in Tools::"financial") when { context.data_class != "secret" };\n'
)
TOOLS = (
    ToolResource("get_balance", "bank", ("financial",), "confidential"),
    ToolResource("get_weather", "web", ("public",), "public"),
    ToolResource("delete_records", "db", ("destructive", "public"), "restricted"),
)


def compiled(make_bundle: BundleFactory, files: dict[str, str]) -> CompiledBundle:
    return compile_bundle(read_bundle(make_bundle(files)))


def authorizer(
    make_bundle: BundleFactory, files: dict[str, str], tools: tuple[ToolResource, ...] = TOOLS
) -> Authorizer:
    return compiled(make_bundle, files).authorizer(tools)


def call(
    az: Authorizer,
    tool: str,
    *,
    agent: str = CREDIT_RISK,
    arguments: dict[str, Any] | None = None,
    data_class: str = "confidential",
) -> Any:
    request = tool_call_request(
        agent_id=agent,
        tool=tool,
        arguments=arguments,
        data_class=data_class,
        session_max_sensitivity=data_class,
        workflow_id="wf-1",
        platform="software-only",
    )
    return az.decide(request)


def test_reference_example_works_as_written(make_bundle: BundleFactory) -> None:
    az = authorizer(make_bundle, {"finance.cedar": REFERENCE_POLICY})
    decision = call(az, "get_balance")
    assert decision.effect is Effect.ALLOW
    assert decision.policy_ids == ("finance.cedar:policy0",)
    assert decision.forwards
    assert call(az, "get_balance", data_class="secret").effect is Effect.DENY
    assert (
        call(az, "get_balance", agent="spiffe://trust.example.org/agent/other").effect
        is Effect.DENY
    )
    assert call(az, "get_weather").effect is Effect.DENY


def test_default_deny_names_no_policy(make_bundle: BundleFactory) -> None:
    az = authorizer(make_bundle, {"p.cedar": REFERENCE_POLICY})
    decision = call(az, "delete_records")
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ()
    assert decision.reasons == ("no permit policy applies (default deny)",)
    assert not decision.forwards


def test_forbid_overrides_permit(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle,
        {
            "p.cedar": 'permit(principal, action, resource in Tools::"public");\n'
            '@id("no-destructive")\nforbid(principal, action, resource in Tools::"destructive");\n'
        },
    )
    assert call(az, "get_weather").effect is Effect.ALLOW
    decision = call(az, "delete_records")
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ("no-destructive",)
    assert decision.reasons == ("forbidden by no-destructive",)


def test_group_membership_uses_every_catalog_group(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle, {"p.cedar": 'permit(principal, action, resource in Tools::"public");'}
    )
    assert call(az, "delete_records").effect is Effect.ALLOW  # member of destructive and public
    assert call(az, "get_balance").effect is Effect.DENY


def test_tool_names_are_exact(make_bundle: BundleFactory) -> None:
    tools = (ToolResource("Get_Weather", "web", ("public",), "public"),)
    az = authorizer(
        make_bundle,
        {"p.cedar": 'permit(principal, action, resource == Tool::"Get_Weather");'},
        tools,
    )
    assert call(az, "Get_Weather").effect is Effect.ALLOW
    assert call(az, "get_weather").effect is Effect.DENY
    assert call(az, "Get_Weather ").effect is Effect.DENY


def test_context_conditions_on_arguments_and_attributes(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle,
        {
            "p.cedar": "permit(principal, action, resource) when {\n"
            '  resource.server == "bank" && context.arguments has account &&\n'
            '  context.arguments.account like "ACME-*" && context.workflow_id == "wf-1"\n'
            "};\n"
        },
    )
    assert call(az, "get_balance", arguments={"account": "ACME-7"}).effect is Effect.ALLOW
    assert call(az, "get_balance", arguments={"account": "OTHER-7"}).effect is Effect.DENY
    assert call(az, "get_balance", arguments={}).effect is Effect.DENY
    assert call(az, "get_weather", arguments={"account": "ACME-7"}).effect is Effect.DENY


def test_redact_annotation_makes_a_redact_decision(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle,
        {
            "p.cedar": '@id("weather")\n@redact("email, /location/street")\n'
            'permit(principal, action, resource == Tool::"get_weather");\n'
            '@id("weather-also")\n@redact("phone")\n'
            'permit(principal, action, resource in Tools::"public");\n'
        },
    )
    decision = call(az, "get_weather")
    assert decision.effect is Effect.REDACT
    assert decision.forwards
    assert decision.policy_ids == ("weather", "weather-also")
    assert decision.redaction.detectors == {"email", "phone"}
    assert decision.redaction.pointers == ("/location/street",)


LARGE_TRANSFERS_ESCALATE = (
    '@id("big")\n@escalate("over the limit")\n'
    "forbid(principal, action, resource) when "
    "{ context.arguments has amount && context.arguments.amount > 100 };\n"
)
CREDIT_RISK_MAY_USE_FINANCE = (
    '@id("finance")\npermit(principal == Agent::"' + CREDIT_RISK + '", action, '
    'resource in Tools::"financial");\n'
)
INTERN = "spiffe://trust.example.org/agent/intern"


def test_an_escalate_forbid_never_stands_in_for_a_missing_permit(
    make_bundle: BundleFactory,
) -> None:
    az = authorizer(
        make_bundle, {"p.cedar": CREDIT_RISK_MAY_USE_FINANCE + LARGE_TRANSFERS_ESCALATE}
    )
    small = call(az, "get_balance", agent=INTERN, arguments={"amount": 5})
    assert (small.effect, small.policy_ids) == (Effect.DENY, ())
    large = call(az, "get_balance", agent=INTERN, arguments={"amount": 500})
    assert large.effect is Effect.DENY
    assert large.policy_ids == ("big",)  # the forbid applied; no permit did
    (reason,) = large.reasons
    assert "no permit policy applies" in reason and "approval cannot allow it" in reason
    assert large.escalation_reasons == ()
    assert not large.forwards and not large.redacts
    # the same for a tool that no permit names for anyone
    assert call(az, "get_weather", arguments={"amount": 500}).effect is Effect.DENY


def test_an_escalate_forbid_holds_what_a_permit_allows(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle, {"p.cedar": CREDIT_RISK_MAY_USE_FINANCE + LARGE_TRANSFERS_ESCALATE}
    )
    held = call(az, "get_balance", arguments={"amount": 500})
    assert held.effect is Effect.ESCALATE
    assert not held.forwards
    # the forbid that holds it and the permit it runs under once approved
    assert held.policy_ids == ("big", "finance")
    assert held.escalation_reasons == ("over the limit",)
    assert held.reasons == (
        "held for operator approval by big; once approved it runs as permitted by finance",
    )
    assert not held.redacts
    assert call(az, "get_balance", arguments={"amount": 5}).effect is Effect.ALLOW


def test_an_approved_escalation_keeps_the_redaction_of_its_permit(
    make_bundle: BundleFactory,
) -> None:
    redacting = (
        '@id("finance")\n@redact("iban, /account/owner")\n'
        'permit(principal, action, resource in Tools::"financial");\n'
    )
    az = authorizer(make_bundle, {"p.cedar": redacting + LARGE_TRANSFERS_ESCALATE})
    held = call(az, "get_balance", arguments={"amount": 500})
    assert held.effect is Effect.ESCALATE
    assert held.redacts
    assert held.redaction.detectors == {"iban"}
    assert held.redaction.pointers == ("/account/owner",)
    assert held.to_json()["redaction"] == {"detectors": ["iban"], "pointers": ["/account/owner"]}
    assert "permitted with redaction by finance" in held.reasons[0]


def test_escalate_needs_every_determining_forbid_to_escalate(make_bundle: BundleFactory) -> None:
    base = "permit(principal, action, resource);\n" + LARGE_TRANSFERS_ESCALATE
    az = authorizer(
        make_bundle,
        {
            "p.cedar": base
            + '@id("hard")\nforbid(principal, action, resource in Tools::"financial");\n'
        },
    )
    decision = call(az, "get_balance", arguments={"amount": 500})
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ("big", "hard")
    assert decision.reasons == ("forbidden by big, hard",)


def test_an_escalate_forbid_that_fails_to_evaluate_is_a_deny(make_bundle: BundleFactory) -> None:
    failing = (
        '@id("open")\npermit(principal, action, resource);\n'
        '@id("limit")\n@escalate("over the limit")\n'
        "forbid(principal, action, resource) when { context.arguments.amount > 100 };\n"
        '@id("weekend")\n@escalate("no transfers on a weekend")\n'
        "forbid(principal, action, resource) when { context.arguments.weekend };\n"
    )
    az = authorizer(make_bundle, {"p.cedar": failing})
    # `amount` is absent: `limit` fails, `weekend` applies; Cedar alone would escalate
    decision = call(az, "get_balance", arguments={"weekend": True})
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ("weekend",)
    assert decision.errors and "limit" in decision.errors[0]
    # both fail: Cedar alone would allow
    decision = call(az, "get_balance", arguments={})
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ("open",)
    assert len(decision.errors) == 2
    both = call(az, "get_balance", arguments={"amount": 500, "weekend": True})
    assert both.effect is Effect.ESCALATE
    assert both.policy_ids == ("limit", "open", "weekend")
    assert both.escalation_reasons == ("over the limit", "no transfers on a weekend")


def test_allow_with_errors_is_a_deny(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle,
        {
            "p.cedar": '@id("open")\npermit(principal, action, resource);\n'
            '@id("limit")\nforbid(principal, action, resource) when { context.arguments.amount > 100 };\n'
        },
    )
    # `amount` is absent: the forbid fails to evaluate, Cedar alone would still allow.
    decision = call(az, "get_balance", arguments={})
    assert decision.effect is Effect.DENY
    assert decision.policy_ids == ("open",)
    assert decision.errors and "limit" in decision.errors[0]
    assert "an allow with errors is a deny" in decision.reasons[0]


def test_float_argument_cannot_slip_past_a_numeric_forbid(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle,
        {
            "p.cedar": "permit(principal, action, resource);\n"
            "forbid(principal, action, resource) when { context.arguments has amount && context.arguments.amount > 100 };\n"
        },
    )
    assert call(az, "get_balance", arguments={"amount": 5}).effect is Effect.ALLOW
    assert call(az, "get_balance", arguments={"amount": 5000.5}).effect is Effect.DENY
    assert call(az, "get_balance", arguments={"amount": 10**30}).effect is Effect.DENY


def test_policy_ids_are_at_id_or_file_qualified(make_bundle: BundleFactory) -> None:
    bundle = compiled(
        make_bundle,
        {
            "a.cedar": 'permit(principal, action, resource);\n@id("named")\nforbid(principal, action, resource) when { false };\n',
            "teams/b.cedar": "// comment\n\npermit(principal, action, resource);\n",
        },
    )
    assert {pid: (p.file, p.line) for pid, p in bundle.policies.items()} == {
        "a.cedar:policy0": ("a.cedar", 1),
        "named": ("a.cedar", 2),
        "teams/b.cedar:policy0": ("teams/b.cedar", 3),
    }


def test_duplicate_ids_are_refused_with_both_locations(make_bundle: BundleFactory) -> None:
    with pytest.raises(BundleError) as caught:
        compiled(
            make_bundle,
            {
                "a.cedar": '@id("x")\npermit(principal, action, resource);\n',
                "b.cedar": '\n@id("x")\nforbid(principal, action, resource);\n',
            },
        )
    (problem,) = caught.value.problems
    assert problem.location is not None and problem.location.endswith("b.cedar:2")
    assert "already used at a.cedar:1" in problem.message


def test_parse_errors_are_located_at_the_failing_policy(make_bundle: BundleFactory) -> None:
    with pytest.raises(BundleError) as caught:
        compiled(
            make_bundle,
            {
                "good.cedar": "permit(principal, action, resource);\n",
                "bad.cedar": "permit(principal, action, resource);\n\n// the next one is broken\n"
                "permit(principal, action, resource) when { context.x == };\n",
                "unterminated.cedar": "permit(principal, action, resource);\nforbid(principal, action, resource)\n",
            },
        )
    located = {Path(p.file or "").name: (p.line, p.message) for p in caught.value.problems}
    assert located["bad.cedar"][0] == 4
    assert "unexpected token" in located["bad.cedar"][1]
    assert located["unterminated.cedar"][0] == 2
    assert "does not end with ';'" in located["unterminated.cedar"][1]
    assert "good.cedar" not in located


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ('@redact("emails")\npermit(principal, action, resource);', "unknown detector 'emails'"),
        ('@redact("/a/~2")\npermit(principal, action, resource);', "not an RFC 6901 JSON pointer"),
        ('@redact("")\npermit(principal, action, resource);', "names nothing to redact"),
        ('@redact("email")\nforbid(principal, action, resource);', "permit policies only"),
        ('@escalate("why")\npermit(principal, action, resource);', "forbid policies only"),
        ('@escalate("")\nforbid(principal, action, resource);', "needs a reason"),
        ('@id("")\npermit(principal, action, resource);', "@id is empty"),
    ],
)
def test_annotation_mistakes_fail_the_bundle(
    make_bundle: BundleFactory, policy: str, message: str
) -> None:
    with pytest.raises(BundleError) as caught:
        compiled(make_bundle, {"p.cedar": "\n" + policy})
    (problem,) = caught.value.problems
    assert message in problem.message
    assert problem.line == 2


def test_templates_are_refused(make_bundle: BundleFactory) -> None:
    with pytest.raises(BundleError) as caught:
        compiled(make_bundle, {"p.cedar": "permit(principal == ?principal, action, resource);"})
    assert "templates" in caught.value.problems[0].message


def test_non_utf8_policy_is_located(make_bundle: BundleFactory) -> None:
    root = make_bundle({"p.cedar": b"permit(principal, action, resource);\n// \xff\n"})
    with pytest.raises(BundleError) as caught:
        compile_bundle(read_bundle(root))
    assert caught.value.problems[0].line == 2


SCHEMA = """
entity Agent;
entity Tools;
entity Tool in [Tools] { server: String, data_class: String };
action call_tool appliesTo {
  principal: [Agent], resource: [Tool],
  context: { data_class: String, session_max_sensitivity: String, workflow_id: String,
             arguments: { amount?: Long }, platform: String }
};
"""


def test_schema_rejects_policies_at_their_line(make_bundle: BundleFactory) -> None:
    with pytest.raises(BundleError) as caught:
        compiled(
            make_bundle,
            {
                "schema.cedarschema": SCHEMA,
                "p.cedar": 'permit(principal, action == Action::"call_tool", resource);\n\n'
                '@id("typo")\npermit(principal, action == Action::"call_tool", resource) when { context.dataclass == "x" };\n'
                "permit(principal, action, resource) when { resource.server == 3 };\n",
            },
        )
    problems = {p.line: p.message for p in caught.value.problems}
    assert set(problems) == {3, 5}
    assert "policy typo does not conform to the schema" in problems[3]
    assert "`typo`" in problems[3] and "`policy1`" not in problems[3]


def test_schema_that_does_not_parse_is_reported(make_bundle: BundleFactory) -> None:
    with pytest.raises(BundleError) as caught:
        compiled(
            make_bundle,
            {
                "schema.cedarschema": "entity Foo { x: Strin };",
                "p.cedar": "permit(principal, action, resource);",
            },
        )
    assert "schema does not parse" in caught.value.problems[0].message


def test_request_failing_schema_validation_is_denied(make_bundle: BundleFactory) -> None:
    az = authorizer(
        make_bundle,
        {"schema.cedarschema": SCHEMA, "p.cedar": "permit(principal, action, resource);"},
    )
    assert az.bundle.has_schema
    assert call(az, "get_balance", arguments={"amount": 3}).effect is Effect.ALLOW
    undeclared = call(az, "get_balance", arguments={"memo": "x"})
    assert undeclared.effect is Effect.DENY
    assert undeclared.reasons == ("request rejected before evaluation; failing closed",)
    assert call(az, "get_balance", arguments={"amount": "three"}).effect is Effect.DENY


def test_catalog_that_does_not_fit_the_schema_is_refused(make_bundle: BundleFactory) -> None:
    bundle = compiled(
        make_bundle,
        {
            "schema.cedarschema": SCHEMA.replace(
                "server: String, data_class: String", "server: String"
            ),
            "p.cedar": "permit(principal, action, resource);",
        },
    )
    with pytest.raises(CatalogError, match="do not fit the bundle schema"):
        bundle.authorizer(TOOLS)


def test_quickstart_bundle_decides_the_three_demo_outcomes() -> None:
    bundle = compile_bundle(read_bundle(QUICKSTART / "policies"))
    az = bundle.authorizer(
        [
            ToolResource("get_weather", "demo", ("public",), "public"),
            ToolResource("lookup_customer", "demo", ("crm",), "confidential"),
            ToolResource("delete_records", "demo", ("destructive",), "restricted"),
            ToolResource("get_balance", "demo", ("financial",), "confidential"),
            ToolResource("transfer_funds", "demo", ("financial",), "restricted"),
        ]
    )
    anonymous = "anonymous"
    assert (
        call(az, "get_weather", agent=anonymous, arguments={"city": "Oslo"}).effect is Effect.ALLOW
    )
    assert (
        call(az, "delete_records", agent=anonymous, arguments={"table": "t"}).effect is Effect.DENY
    )
    redacted = call(az, "lookup_customer", agent=anonymous, arguments={"customer_id": "c1"})
    assert redacted.effect is Effect.REDACT
    assert redacted.redaction.pointers == ("/customer/ssn",)
    assert call(az, "get_balance", arguments={"account_id": "a"}).effect is Effect.ALLOW
    held = call(az, "transfer_funds", arguments={"account_id": "a", "amount": 20000})
    assert held.effect is Effect.ESCALATE
    # the financial permit names only the credit-risk agent: for anyone else it is a deny
    large = {"account_id": "a", "amount": 20000}
    assert call(az, "transfer_funds", agent=anonymous, arguments=large).effect is Effect.DENY
