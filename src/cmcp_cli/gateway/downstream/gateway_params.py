"""What a request says to the gateway itself, on every protocol revision.

`params._cmcp` is the gateway's own: an object with `session_id` (the session of a plain
JSON-RPC call) and `workflow_id`. It is taken off the request before anything is decided
on it or forwarded, so neither the policy's `context.arguments` nor an upstream sees it.
The workflow id may also come as the `Cmcp-Workflow-Id` header or as
`params._meta["_cmcp.workflow_id"]`, which official SDK clients can set; sources that
disagree are refused, as headers that disagree with the body are. It fills Cedar's
`context.workflow_id` of tool calls.

A verifier's challenge for the session comes as the `Cmcp-Challenge` header or as
`params._meta["com.agentrust-io.cmcp/challenge"]` (`claim.challenge`); one that is not a
challenge, or two that disagree, is refused. It is bound when the request opens its
session (`bound_challenge` judges it on any other request). A request that says none of
this costs three dict lookups and one header scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_cli.claim.challenge import CHALLENGE_HEADER, CHALLENGE_META_KEY, challenge_problem
from cmcp_cli.wire.asgi import Scope
from cmcp_cli.wire.jsonrpc import Code, Message, ProtocolError
from cmcp_cli.wire.mcp import (
    GATEWAY_PARAM_KEYS,
    GATEWAY_PARAMS,
    RESERVED_SESSION_IDS,
    SESSION_ID,
    WORKFLOW_HEADER,
    WORKFLOW_ID,
    WORKFLOW_KEY,
)

_HEADER = WORKFLOW_HEADER.lower().encode("latin-1")
_CHALLENGE_HEADER = CHALLENGE_HEADER.encode("latin-1")
_CHALLENGE_HEADER_FIELD = "the Cmcp-Challenge header"
_CHALLENGE_META_FIELD = f"params._meta[{CHALLENGE_META_KEY!r}]"
_SESSION_FIELD = f"params.{GATEWAY_PARAMS}.session_id"
_WORKFLOW_FIELD = f"params.{GATEWAY_PARAMS}.workflow_id"
_META_FIELD = f"params._meta[{WORKFLOW_KEY!r}]"


@dataclass(frozen=True, slots=True)
class GatewayParams:
    """The session a plain call names (None: the agent's default session), the
    workflow the request belongs to ("" for none) and the verifier's challenge it gives
    (None for none)."""

    session_id: str | None = None
    workflow_id: str = ""
    challenge: str | None = None


NONE = GatewayParams()


def take(scope: Scope, message: Message) -> tuple[Message, GatewayParams]:
    """The request without `params._cmcp`, and what it says to the gateway."""
    params = message.params
    header, challenge_header = _headers(scope)
    meta = params.get("_meta")
    meta = meta if isinstance(meta, Mapping) else {}
    in_meta = WORKFLOW_KEY in meta
    challenged = challenge_header is not None or CHALLENGE_META_KEY in meta
    if GATEWAY_PARAMS not in params and header is None and not in_meta and not challenged:
        return message, NONE
    challenge = _challenge(message, challenge_header, meta) if challenged else None
    own = params.get(GATEWAY_PARAMS, {})
    if not isinstance(own, Mapping):
        raise _refused(
            message,
            f"params.{GATEWAY_PARAMS} must be an object with any of "
            f"{', '.join(GATEWAY_PARAM_KEYS)}",
        )
    unknown = sorted(str(key) for key in own if key not in GATEWAY_PARAM_KEYS)
    if unknown:
        raise _refused(
            message,
            f"params.{GATEWAY_PARAMS} has unknown key(s) {', '.join(map(repr, unknown))}: "
            f"the known keys are {', '.join(GATEWAY_PARAM_KEYS)}",
        )
    session_id = own.get("session_id")
    if "session_id" in own and (
        not isinstance(session_id, str)
        or not SESSION_ID.fullmatch(session_id)
        or session_id in RESERVED_SESSION_IDS
    ):
        raise _refused(
            message,
            f"{_SESSION_FIELD} must be 1 to 64 letters, digits, '_' or '-' "
            f"(and not {', '.join(map(repr, sorted(RESERVED_SESSION_IDS)))})",
        )
    sources: dict[str, object] = {}
    if "workflow_id" in own:
        sources[_WORKFLOW_FIELD] = own["workflow_id"]
    if header is not None:
        sources[f"the {WORKFLOW_HEADER} header"] = header
    if in_meta:
        sources[_META_FIELD] = meta[WORKFLOW_KEY]
    workflow = _agreed(message, "workflow id", sources, _workflow_problem, Code.HEADER_MISMATCH)
    workflow_id = "" if workflow is None else str(workflow)
    if GATEWAY_PARAMS in params:
        kept: dict[str, Any] = {k: v for k, v in params.items() if k != GATEWAY_PARAMS}
        message = dataclasses.replace(message, params=kept)
    return message, GatewayParams(
        session_id=session_id, workflow_id=workflow_id, challenge=challenge
    )


def _headers(scope: Scope) -> tuple[str | None, str | None]:
    """The `Cmcp-Workflow-Id` and `Cmcp-Challenge` headers (None for one absent), found
    in one scan of the request's headers (names compared lower-case). Each appears at most
    once: the transport rules refused a request repeating either."""
    workflow = challenge = None
    for key, value in scope["headers"]:
        name = key.lower()
        if name == _HEADER:
            workflow = str(value.decode("latin-1"))
        elif name == _CHALLENGE_HEADER:
            challenge = str(value.decode("latin-1"))
    return workflow, challenge


def _challenge(message: Message, header: str | None, meta: Mapping[str, Any]) -> str:
    """The challenge the request gives in its header, its `_meta`, or the same in both;
    refused when either is not a challenge, or when they differ."""
    sources: dict[str, object] = {}
    if header is not None:
        sources[_CHALLENGE_HEADER_FIELD] = header
    if CHALLENGE_META_KEY in meta:
        sources[_CHALLENGE_META_FIELD] = meta[CHALLENGE_META_KEY]
    return str(_agreed(message, "challenge", sources, _challenge_refusal, Code.INVALID_PARAMS))


def _workflow_problem(value: object) -> str | None:
    if isinstance(value, str) and WORKFLOW_ID.fullmatch(value):
        return None
    return "must be 1 to 128 printable ASCII characters, without a space at either end"


def _challenge_refusal(value: object) -> str | None:
    problem = challenge_problem(value)
    if problem is None:
        return None
    return (
        f"is refused: {problem}; send the challenge as 16 to 64 random bytes in base64url "
        "without padding"
    )


def _agreed(
    message: Message,
    what: str,
    sources: Mapping[str, object],
    problem: Callable[[object], str | None],
    mismatch: Code,
) -> object | None:
    """The one value `sources` (each named as a refusal names it) give for `what`, None
    when they give none. Refused when a value has a `problem` (said after the source's
    name), or, with the `mismatch` code, when two sources differ."""
    for field, value in sources.items():
        reason = problem(value)
        if reason is not None:
            raise _refused(message, f"{field} {reason}")
    if len(set(sources.values())) > 1:
        raise _refused(
            message,
            f"the {what} is given twice, differently ({' and '.join(sources)}): send it "
            "once, or the same in each",
            code=mismatch,
        )
    return next(iter(sources.values()), None)


def bound_challenge(
    message: Message, given: str | None, bound: str | None, session_id: str, how: str
) -> None:
    """Refuse a challenge given on a request that does not open its session, unless it is
    the one the session was opened with (`bound`): evidence collected when the session
    opened cannot answer a challenge given after it. `how` says how to open a new session
    with it."""
    if given is None or given == bound:
        return
    opened = "without a challenge" if bound is None else "with another challenge"
    raise _refused(
        message,
        f"a challenge is bound when its session opens: session {session_id} was opened "
        f"{opened}; open a new session with it ({how})",
    )


def stray_challenge(scope: Scope, bound: str | None, session_id: str, how: str) -> str | None:
    """Why a `Cmcp-Challenge` header on a request that carries no JSON-RPC message (the
    session's stream, or its end) is refused, or None when it has none or the session's
    own: such a request opens nothing, so no other challenge can be bound by it."""
    _, given = _headers(scope)
    if given is None or given == bound:
        return None
    problem = challenge_problem(given)
    if problem is not None:
        return f"the Cmcp-Challenge header is refused: {problem}"
    opened = "without a challenge" if bound is None else "with another challenge"
    return (
        f"a challenge is bound when its session opens: session {session_id} was opened "
        f"{opened}; open a new session with it ({how})"
    )


def _refused(message: Message, text: str, *, code: Code = Code.INVALID_PARAMS) -> ProtocolError:
    return ProtocolError(code, text, request_id=message.id, http_status=400)
