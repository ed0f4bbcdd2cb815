"""The conformance fixture's 2026-07-28 InputRequiredResult tools and prompt (SEP-2322).

Each answers with an InputRequiredResult until the client retries with the answers
(`inputResponses`); `requestState` is sealed and checked by the SDK, so a tampered echo is
refused before the handler runs.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.types import (
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequest,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    TextContent,
)


def ask_name(message: str = "What is your name?") -> ElicitRequest:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def ask_model(prompt: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
    params = CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    return CreateMessageRequest(params=params)


def elicited(answer: object, field: str) -> Any:
    """`field` of an accepted elicitation's content, None for anything else."""
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(field)
    return None


def ask_confirmation() -> ElicitRequest:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    return ElicitRequest(
        params=ElicitRequestFormParams(message="Please confirm", requested_schema=schema)
    )


async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """One elicitation, then a greeting with the answer."""
    answers = ctx.input_responses
    if answers and "user_name" in answers:
        return f"Hello, {elicited(answers['user_name'], 'name') or '?'}!"
    return InputRequiredResult(input_requests={"user_name": ask_name()})


async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """One sampling request, then the model's text."""
    answers = ctx.input_responses
    if answers and "capital_question" in answers:
        answer = answers["capital_question"]
        is_text = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
        return f"Model said: {answer.content.text if is_text else '?'}"  # type: ignore[union-attr]
    question = ask_model("What is the capital of France?", 100)
    return InputRequiredResult(input_requests={"capital_question": question})


async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """One roots/list request, then the number of roots."""
    answers = ctx.input_responses
    if answers and "client_roots" in answers:
        answer = answers["client_roots"]
        count = len(answer.roots) if isinstance(answer, ListRootsResult) else 0
        return f"Client exposed {count} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Completes only when the answer comes back with the requestState it was asked with."""
    answers = ctx.input_responses
    if answers and "confirm" in answers and ctx.request_state == "request-state-nonce":
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": ask_confirmation()}, request_state="request-state-nonce"
    )


async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """An elicitation, a sampling and a roots request at once."""
    answers = ctx.input_responses
    if answers and {"user_name", "greeting", "client_roots"} <= answers.keys():
        return "All inputs received."
    return InputRequiredResult(
        input_requests={
            "user_name": ask_name(),
            "greeting": ask_model("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        },
        request_state="multiple-inputs",
    )


async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds: a name, then a colour, then the sentence; requestState carries the round."""
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    answers = ctx.input_responses or {}
    if state["round"] == 1 and "step1" in answers:
        schema = {
            "type": "object",
            "properties": {"color": {"type": "string"}},
            "required": ["color"],
        }
        colour = ElicitRequest(
            params=ElicitRequestFormParams(
                message="Step 2: What is your favorite color?", requested_schema=schema
            )
        )
        name = elicited(answers["step1"], "name")
        return InputRequiredResult(
            input_requests={"step2": colour}, request_state=json.dumps({"round": 2, "name": name})
        )
    if state["round"] == 2 and "step2" in answers:
        return f"{state.get('name')} likes {elicited(answers['step2'], 'color')}."
    # First round, or an answer missing or out of order: start over.
    return InputRequiredResult(
        input_requests={"step1": ask_name("Step 1: What is your name?")},
        request_state=json.dumps({"round": 1}),
    )


async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Asks once; a tampered requestState is refused by the SDK before this runs."""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": ask_confirmation()}, request_state="round-1"
        )
    return f"state-ok: {ctx.request_state}"


async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Asks only for what the client declared it can answer."""
    capabilities = ctx.client_capabilities
    wanted: dict[str, InputRequest] = {}
    if capabilities is None or capabilities.sampling is not None:
        wanted["sample"] = ask_model("Say hello", 50)
    if capabilities is None or capabilities.elicitation is not None:
        wanted["ask"] = ask_name()
    return InputRequiredResult(input_requests=wanted, request_state="capability-gated")


async def test_input_required_result_prompt(
    ctx: Context,
) -> list[UserMessage] | InputRequiredResult:
    """InputRequiredResult from prompts/get: asks for context, then uses it."""
    answers = ctx.input_responses
    if answers and "user_context" in answers:
        text = elicited(answers["user_context"], "context") or "?"
        content = TextContent(type="text", text=f"Use the following context: {text}")
        return [UserMessage(role="user", content=content)]
    schema = {
        "type": "object",
        "properties": {"context": {"type": "string"}},
        "required": ["context"],
    }
    question = ElicitRequest(
        params=ElicitRequestFormParams(
            message="What context should the prompt use?", requested_schema=schema
        )
    )
    return InputRequiredResult(input_requests={"user_context": question})


async def test_streaming_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Needs the user's confirmation: asks with an InputRequiredResult after a progress
    report, never with an elicitation/create request on the response stream."""
    answers = ctx.input_responses
    if answers and "confirm" in answers:
        return "confirmed"
    await ctx.report_progress(progress=50, total=100)
    return InputRequiredResult(input_requests={"confirm": ask_confirmation()})


TOOLS = (
    test_input_required_result_elicitation,
    test_input_required_result_sampling,
    test_input_required_result_list_roots,
    test_input_required_result_request_state,
    test_input_required_result_multiple_inputs,
    test_input_required_result_multi_round,
    test_input_required_result_tampered_state,
    test_input_required_result_capabilities,
    test_streaming_elicitation,
)


def register(server: MCPServer) -> None:
    """Add every InputRequiredResult tool and prompt to `server`."""
    for tool in TOOLS:
        server.tool()(tool)
    server.prompt()(test_input_required_result_prompt)
