"""Every bearer token the gateway would accept, from every source, by SHA-256 digest.

A token is named in the config file by digest (`token_sha256`, `operator_token_sha256`) or
by the environment variable that holds it (`token_env`, `operator_token_env`), or given in
CMCP_BEARER_TOKEN / CMCP_OPERATOR_TOKEN. The gateway builds its credentials from
`token_sources` and `check_token_reuse` compares all of them, so no source escapes the
check: a token that authenticates two agents, or an agent and the operator (who could then
approve its own escalations), is refused. Only digests are compared; no token is shown.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cmcp_cli.config import ENV_BEARER_TOKEN, ENV_OPERATOR_TOKEN, CmcpConfig, Environment
from cmcp_cli.errors import Problem, Severity
from cmcp_cli.gateway.preflight.checks import Locator

_OWN_TOKEN_HINT = "give each agent, and the operator, a token of its own"  # noqa: S105 - a hint


@dataclass(frozen=True)
class TokenSource:
    """One place a token comes from, and whom it authenticates."""

    where: str  # how a person finds it: a config key or an environment variable
    loc: tuple[str | int, ...] | None  # its key in the config file; None for the environment
    agent: str | None  # None: the operator
    digest: bytes

    @property
    def holder(self) -> str:
        return "the operator" if self.agent is None else f"agent {self.agent!r}"


def token_sources(
    config: CmcpConfig, env: Environment, environ: Mapping[str, str]
) -> list[TokenSource]:
    """Each source that holds a token: agents' first, then the operator's in the order the
    gateway prefers them (CMCP_OPERATOR_TOKEN, operator_token_sha256, operator_token_env).
    A variable that is named but not set is no source (`check_auth` reports it)."""
    auth = config.auth
    sources: list[TokenSource] = []
    for index, token in enumerate(auth.bearer_tokens):
        loc: tuple[str | int, ...] = ("auth", "bearer_tokens", index)
        if token.token_sha256 is not None:
            digest = _from_hex(token.token_sha256)
            sources.append(TokenSource(f"auth.bearer_tokens[{index}]", loc, token.agent, digest))
        elif token.token_env is not None and environ.get(token.token_env):
            where = f"{token.token_env} of auth.bearer_tokens[{index}]"
            sources.append(TokenSource(where, loc, token.agent, _sha256(environ[token.token_env])))
    if env.bearer_token is not None:
        digest = _sha256(env.bearer_token.get_secret_value())
        sources.append(TokenSource(ENV_BEARER_TOKEN, None, auth.env_token_agent, digest))
    if env.operator_token is not None:
        digest = _sha256(env.operator_token.get_secret_value())
        sources.append(TokenSource(ENV_OPERATOR_TOKEN, None, None, digest))
    if auth.operator_token_sha256 is not None:
        loc = ("auth", "operator_token_sha256")
        digest = _from_hex(auth.operator_token_sha256)
        sources.append(TokenSource("auth.operator_token_sha256", loc, None, digest))
    if auth.operator_token_env is not None and environ.get(auth.operator_token_env):
        loc = ("auth", "operator_token_env")
        where = f"{auth.operator_token_env} of auth.operator_token_env"
        sources.append(TokenSource(where, loc, None, _sha256(environ[auth.operator_token_env])))
    return sources


def check_token_reuse(sources: Sequence[TokenSource], at: Locator) -> list[Problem]:
    """An error for each pair of sources whose token is the same but whose holders differ:
    two agents, or an agent and the operator. Operator sources among themselves may agree."""
    problems: list[Problem] = []
    for index, first in enumerate(sources):
        for second in sources[index + 1 :]:
            if first.digest != second.digest or first.agent == second.agent:
                continue
            if first.agent is None or second.agent is None:
                operator, agent = (first, second) if first.agent is None else (second, first)
                message = (
                    f"the operator token ({operator.where}) is also the token of "
                    f"{agent.holder} ({agent.where}): that agent could approve its own "
                    "escalated calls and read every session's claim"
                )
            else:
                message = (
                    f"the same token is mapped to agents {first.agent!r} ({first.where}) and "
                    f"{second.agent!r} ({second.where})"
                )
            located = second if second.loc is not None else first
            if located.loc is None:
                problems.append(Problem(message, hint=_OWN_TOKEN_HINT))
            else:
                problems.append(at.error(located.loc, message, _OWN_TOKEN_HINT))
    return problems


def check_operator_sources(sources: Sequence[TokenSource], at: Locator) -> list[Problem]:
    """A warning for each operator token the gateway will not accept: it takes the first
    operator source of `token_sources` only, so a different token set elsewhere does not
    do what its setting says."""
    operators = [source for source in sources if source.agent is None]
    if not operators:
        return []
    used = operators[0]
    problems: list[Problem] = []
    for ignored in operators[1:]:
        if ignored.digest == used.digest:
            continue
        message = (
            f"the operator token of {ignored.where} is not accepted: the gateway takes the "
            f"operator's token from {used.where}"
        )
        hint = f"remove one of the two, or give both the same token; {used.where} comes first"
        if ignored.loc is None:
            problems.append(Problem(message, hint=hint, severity=Severity.WARNING))
        else:
            problems.append(at.warning(ignored.loc, message, hint))
    return problems


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _from_hex(digest: str) -> bytes:
    return bytes.fromhex(digest.removeprefix("sha256:"))
