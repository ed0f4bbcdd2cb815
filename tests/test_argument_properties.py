"""Property tests: any JSON arguments either become a request Cedar accepts, or a deny."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcp_cli.errors import PolicyRequestError
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.decision import Effect
from cmcp_cli.policy.engine import Authorizer, compile_bundle
from cmcp_cli.policy.request import CedarRequest, ToolResource, cedar_record, tool_call_request

RESERVED = ("__entity", "__extn", "__expr")
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(RESERVED)), children, max_size=4
        ),
    ),
    max_leaves=20,
)
arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _mentions_reserved(value: Any) -> bool:
    """Whether a reserved key appears anywhere, even with a null value."""
    if isinstance(value, dict):
        return any(k in RESERVED or _mentions_reserved(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_reserved(v) for v in value)
    return False


@pytest.fixture(scope="module")
def open_authorizer(tmp_path_factory: pytest.TempPathFactory) -> Authorizer:
    root = tmp_path_factory.mktemp("bundle")
    (root / "manifest.json").write_text(
        '{"version": "1", "authored_at": "2026-11-21T00:00:00Z", "author": "tests"}'
    )
    (root / "p.cedar").write_text("permit(principal, action, resource);\n")
    return compile_bundle(read_bundle(root)).authorizer([ToolResource("t", "s", ("g",), "public")])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arguments)
def test_arguments_are_accepted_by_cedar_or_refused(
    open_authorizer: Authorizer, value: dict[str, Any]
) -> None:
    def build() -> CedarRequest:
        return tool_call_request(
            agent_id="a",
            tool="t",
            arguments=value,
            data_class="public",
            session_max_sensitivity="public",
            platform="software-only",
        )

    if _mentions_reserved(value):
        with pytest.raises(PolicyRequestError, match="reserved by Cedar's JSON format"):
            build()
        return
    decision = open_authorizer.decide(build())
    assert decision.effect is Effect.ALLOW, decision.errors


@given(arguments)
def test_conversion_never_leaves_null_or_float(value: dict[str, Any]) -> None:
    try:
        record = cedar_record(value)
    except PolicyRequestError:
        return

    def walk(node: Any) -> None:
        assert node is not None
        assert not isinstance(node, float)
        if isinstance(node, int) and not isinstance(node, bool):
            assert -(2**63) <= node < 2**63
        if isinstance(node, dict):
            for member in node.values():
                walk(member)
        if isinstance(node, list):
            for member in node:
                walk(member)

    walk(record)
