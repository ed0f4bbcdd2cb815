"""The validate-config checks of policy reload: a reload never runs without a rule that
says which bundles it may take, and never under settings it cannot honour."""

from __future__ import annotations

from cmcp_cli.config import CmcpConfig
from cmcp_cli.errors import Problem, UsageError
from cmcp_cli.gateway.preflight.checks import Locator
from cmcp_cli.policy.acceptance import BundleRefusedError, compare_versions, load_public_key
from cmcp_cli.policy.engine import CompiledBundle

_RULE_HINT = (
    "set policy.reload.accept_hashes (the bundle hashes you allow) or "
    "policy.reload.signing_keys (Ed25519 public keys whose signed bundles you allow)"
)
# Providers whose measurement covers the bundle (the TPM quotes the PCR it extends with
# each bundle hash): a bundle taken later changes the measurement, which a pinned
# `expected_measurement` cannot match after it, so configuring both is refused.
MEASURING_PROVIDERS = ("tpm",)
# The agent of the session a policy event is recorded in when no client session is open:
# no configured agent may have this name (it would read those sessions' claims).
EVENT_AGENT = "cmcp:gateway"


def measured_reload_problem(provider: str) -> str:
    return (
        f"the {provider} provider's measurement covers the policy bundle, so a reloaded "
        "bundle changes it and attestation.expected_measurement would no longer hold"
    )


def check_reload(config: CmcpConfig, bundle: CompiledBundle | None, at: Locator) -> list[Problem]:
    reload = config.policy.reload
    problems: list[Problem] = []
    if config.policy_reload_interval_seconds > 0 and not reload.configured:
        problems.append(
            at.error(
                ("policy_reload_interval_seconds",),
                "reloading is on, but no rule says which bundles may replace the running one; "
                "the gateway would take any bundle written to the directory",
                hint=_RULE_HINT,
            )
        )
    if reload.grace_seconds is not None and not reload.configured:
        problems.append(
            at.error(
                ("policy", "reload", "grace_seconds"),
                "a grace period without a reload rule does nothing",
                hint=_RULE_HINT,
            )
        )
    if reload.accept_hashes and reload.signing_keys:
        problems.append(
            at.error(
                ("policy", "reload"),
                "give accept_hashes or signing_keys, not both: either one alone is the rule",
                hint="keep the rule you mean and remove the other",
            )
        )
    for index, path in enumerate(reload.signing_keys):
        try:
            load_public_key(path)
        except UsageError as exc:
            problems.append(
                at.error(("policy", "reload", "signing_keys", index), exc.message, exc.hint)
            )
    if reload.signing_keys and bundle is not None:
        version = bundle.source.manifest.version
        try:
            compare_versions(version, version)
        except BundleRefusedError as exc:
            problems.append(
                at.error(
                    ("policy_bundle_path",),
                    f"the running bundle's {exc.message}: a signed bundle must have a higher "
                    "version, which cannot be decided",
                    exc.hint,
                )
            )
    for index, token in enumerate(config.auth.bearer_tokens):
        if token.agent == EVENT_AGENT:
            problems.append(
                at.error(
                    ("auth", "bearer_tokens", index, "agent"),
                    f"{EVENT_AGENT!r} is the gateway's own agent for policy events",
                    hint="choose another agent name",
                )
            )
    if (
        reload.configured
        and config.attestation.expected_measurement
        and config.attestation.provider in MEASURING_PROVIDERS
    ):
        problems.append(
            at.error(
                ("policy", "reload"),
                measured_reload_problem(config.attestation.provider),
                hint="remove policy.reload (restart to change the bundle), or pin no "
                "measurement and verify claims with their own evidence's event log",
            )
        )
    return problems
