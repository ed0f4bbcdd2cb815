"""Everything a running gateway holds, built once from a checked config.

`build_runtime` refuses to build from a config with errors, chooses the attestation
provider (with `auto`, the first found in `preflight.attestation.AUTO_ORDER`: SEV-SNP, TDX,
Azure SEV-SNP, Azure TDX, TPM; passing over one that cannot load here; software only with
CMCP_DEV_MODE=1, never as a silent fallback) and the device providers that attest devices
beside it (`preflight.devices`), opens the audit store and prepares the upstream clients.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import GatewayFacts, ProviderError
from cmcp_cli.attestation.manager import (
    ProviderRegistry,
    ProviderUnavailableError,
    load_collector,
    load_providers,
)
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.processes import (
    StoreInUseError,
    StoreLock,
    lock_store,
    record_start,
    record_stop,
)
from cmcp_cli.audit.session_record import SessionPolicy
from cmcp_cli.audit.store import AuditStore
from cmcp_cli.catalog.model import Catalog
from cmcp_cli.claim.keys import ClaimKey
from cmcp_cli.config import ENV_DEV_MODE, CmcpConfig, Environment
from cmcp_cli.errors import CmcpError, ConfigError, UsageError
from cmcp_cli.evidence.appraisal_config import SECTION as APPRAISAL_SECTION
from cmcp_cli.evidence.appraisal_config import (
    AppraisalSettingError,
    read_appraisal,
    unappraised_problem,
)
from cmcp_cli.evidence.appraising import AppraisalInputs, unappraised_reason
from cmcp_cli.evidence.attesting import (
    GATEWAY_PROCESS,
    AppraisalBelowRequiredError,
    AttestationUnavailableError,
    Attestor,
    MeasurementMismatchError,
    PlatformPolicyRefusedError,
    attest_key,
)
from cmcp_cli.evidence.recovery import RecoveryReport, recover_sessions
from cmcp_cli.gateway.enforcement.wiring import authorizer_for, tool_resources
from cmcp_cli.gateway.preflight.anchoring import log_key_problem
from cmcp_cli.gateway.preflight.attestation import candidates, plugin_of
from cmcp_cli.gateway.preflight.credentials import token_sources
from cmcp_cli.gateway.preflight.devices import DeviceStartupError, choose_devices
from cmcp_cli.gateway.preflight.reload import MEASURING_PROVIDERS, measured_reload_problem
from cmcp_cli.gateway.preflight.report import ConfigReport
from cmcp_cli.gateway.upstream.api import UpstreamChannel
from cmcp_cli.gateway.upstream.listing import upstream_channels
from cmcp_cli.policy.acceptance import load_public_key
from cmcp_cli.policy.engine import Authorizer, CompiledBundle
from cmcp_cli.policy.request import ToolResource

ANONYMOUS_AGENT = "anonymous"


class StartupError(CmcpError):
    """The gateway cannot start as configured."""


@dataclass(frozen=True)
class Caller:
    """Who a request authenticates as: an agent, the operator, or neither (both is refused
    by the config checks: an operator token may not also be an agent's)."""

    agent: str | None
    operator: bool

    @property
    def authenticated(self) -> bool:
        return self.operator or self.agent is not None


@dataclass(frozen=True)
class Credentials:
    """Bearer tokens by SHA-256 digest, each naming the agent it authenticates."""

    agents_by_digest: Mapping[bytes, str]
    operator_digest: bytes | None
    anonymous_allowed: bool  # dev mode on loopback without any configured token

    def agent_for(self, token: str | None) -> str | None:
        if token is None:
            return ANONYMOUS_AGENT if self.anonymous_allowed else None
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, agent in self.agents_by_digest.items():  # every digest compared: no early exit
            if hmac.compare_digest(known, digest):
                found = agent
        return found

    def is_operator(self, token: str | None) -> bool:
        if token is None or self.operator_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.operator_digest)

    def caller(self, token: str | None) -> Caller:
        return Caller(agent=self.agent_for(token), operator=self.is_operator(token))


@dataclass(frozen=True)
class MeasurementCheck:
    """`attestation.expected_measurement` against the evidence collected at start."""

    pins: tuple[str, ...] = ()
    measurement: str | None = None  # stated by the first evidence; None when none is taken
    matched: str | None = None  # the pin it matched

    def to_json(self) -> dict[str, object]:
        return {
            "pinned": bool(self.pins),
            "pins": list(self.pins),
            "measurement": self.measurement,
            "matched_pin": self.matched,
        }


@dataclass(frozen=True)
class ActivePolicy:
    """A compiled bundle with what sessions opened under it decide and record with. Built
    once and never changed: a reload builds another and swaps it in whole (`GatewayRuntime
    .active`), and each session keeps the one it was opened under for its whole life."""

    bundle: CompiledBundle
    authorizer: Authorizer
    session: SessionPolicy
    generation: int = 0  # 0 for the bundle the gateway started with, +1 per bundle taken

    @property
    def hash(self) -> str:
        return self.bundle.hash


def active_policy(
    config: CmcpConfig, bundle: CompiledBundle, catalog: Catalog, generation: int = 0
) -> ActivePolicy:
    """The policy of `bundle` against the running catalog; `CmcpError` when the bundle
    cannot decide for that catalog (its schema rejects the catalog's entities)."""
    return ActivePolicy(
        bundle=bundle,
        authorizer=authorizer_for(bundle, catalog),
        session=SessionPolicy(
            bundle_hash=bundle.hash,
            policy_version=bundle.source.manifest.version,
            catalog_hash=catalog.hash,
            catalog_pinning=config.catalog_pinning,
            enforcement_mode=config.attestation.enforcement_mode,
            data_class_order=config.policy.data_class_order,
            trust_domain=config.claims.trust_domain,
            model_provider=config.claims.model.provider,
            model_id=config.claims.model.model_id,
            record_inputs=config.audit.record_inputs,
        ),
        generation=generation,
    )


@dataclass
class GatewayRuntime:
    config: CmcpConfig
    # The policy new sessions open under; replaced whole (one assignment on the event
    # loop) by a reload, never mutated.
    active: ActivePolicy
    catalog: Catalog
    tools: Mapping[str, ToolResource]
    store: AuditStore
    attestor: Attestor
    upstreams: Mapping[str, UpstreamChannel]
    credentials: Credentials
    dev_mode: bool
    passed_over: tuple[str, ...] = ()  # providers `auto` tried before its choice, and why
    devices_left_out: tuple[str, ...] = ()  # device providers not attesting here, and why
    lock: StoreLock | None = None  # the audit store's, held while this gateway runs
    recovery: RecoveryReport = field(default_factory=RecoveryReport)  # at start
    measurement: MeasurementCheck = field(default_factory=MeasurementCheck)

    reload_keys: tuple[Ed25519PublicKey, ...] = ()  # policy.reload.signing_keys, loaded
    anchor_log_key: bytes | None = None  # trace.anchor.log_key's PEM, read at start

    @property
    def bundle(self) -> CompiledBundle:
        """The bundle new sessions open under."""
        return self.active.bundle

    @property
    def claims_dir(self) -> Path:
        return self.config.claims.dir

    def close(self) -> None:
        """Once every session is closed: record the clean stop, and let the store go."""
        for upstream in self.upstreams.values():
            upstream.close()
        self.store.close()
        self.attestor.close()
        if self.lock is not None and self.lock.held:
            record_stop(self.store.path, self.lock.holder.process)
            self.lock.release()


def build_runtime(
    report: ConfigReport,
    environ: Mapping[str, str] | None = None,
    registry: ProviderRegistry | None = None,
) -> GatewayRuntime:
    environ = os.environ if environ is None else environ
    config, env, bundle, catalog = report.config, report.env, report.bundle, report.catalog
    if not report.ok or config is None or env is None or bundle is None or catalog is None:
        raise ConfigError(
            f"{report.source} has problems; the gateway does not start",
            problems=report.errors,
            hint=report.check_hint,
        )
    registry = registry or load_providers()
    choice = choose_attestor(config, env, registry)
    attestor = replace(
        choice.attestor,
        pins=config.attestation.expected_measurement,
        validity_seconds=config.attestation.validity_seconds,
        appraisal=_appraisal_inputs(config, registry, choice.attestor),
        anchor_url=None if config.trace.anchor is None else config.trace.anchor.url,
    )
    if (
        config.policy.reload.configured
        and config.attestation.expected_measurement
        and attestor.spec.name in MEASURING_PROVIDERS
    ):
        attestor.close()
        raise StartupError(
            f"`auto` chose the {attestor.spec.name} provider: "
            + measured_reload_problem(attestor.spec.name),
            hint="remove policy.reload or attestation.expected_measurement",
        )
    facts = GatewayFacts(bundle.hash, catalog.hash, installation_digest())
    prepare_attestor(attestor, facts)
    attestor, left_out = _with_devices(config, registry, attestor, facts)
    measurement = check_measurement(attestor, bundle.hash, catalog.hash)
    active = active_policy(config, bundle, catalog)
    tools = {tool.name: tool for tool in tool_resources(catalog)}
    reload_keys = _reload_keys(config, attestor)
    anchor_log_key = _anchor_log_key(config, attestor)
    upstreams = upstream_channels(config, base=report.base_dir, environ=environ)
    config.claims.dir.mkdir(parents=True, exist_ok=True)
    store, lock, recovery = open_store(config, attestor)
    return GatewayRuntime(
        config=config,
        active=active,
        catalog=catalog,
        tools=tools,
        store=store,
        attestor=attestor,
        upstreams=upstreams,
        credentials=_credentials(config, env, environ),
        dev_mode=env.dev_mode,
        passed_over=choice.passed_over,
        devices_left_out=left_out,
        lock=lock,
        recovery=recovery,
        measurement=measurement,
        reload_keys=reload_keys,
        anchor_log_key=anchor_log_key,
    )


def _with_devices(
    config: CmcpConfig, registry: ProviderRegistry, attestor: Attestor, facts: GatewayFacts
) -> tuple[Attestor, tuple[str, ...]]:
    """`attestor` with the device providers prepared beside it, and those left out."""
    try:
        choice = choose_devices(config, registry, facts)
    except DeviceStartupError as exc:
        attestor.close()
        raise StartupError(exc.message, hint=exc.hint) from exc
    except BaseException:
        attestor.close()
        raise
    return replace(attestor, devices=choice.attestors), choice.left_out


def _appraisal_inputs(
    config: CmcpConfig, registry: ProviderRegistry, attestor: Attestor
) -> AppraisalInputs:
    """`trace.appraisal`, read; `StartupError` naming the setting that cannot be used."""
    settings = config.trace.appraisal
    problem = unappraised_problem(settings, attestor.spec)
    if problem is None:
        try:
            return read_appraisal(settings, registry)
        except AppraisalSettingError as exc:
            problem = exc
    attestor.close()
    key = ".".join(str(part) for part in (*APPRAISAL_SECTION, *problem.key))
    raise StartupError(f"{key}: {problem.message}", hint=problem.hint)


def _reload_keys(config: CmcpConfig, attestor: Attestor) -> tuple[Ed25519PublicKey, ...]:
    try:
        return tuple(load_public_key(path) for path in config.policy.reload.signing_keys)
    except UsageError as exc:  # validate-config reports it too; the file changed since
        attestor.close()
        raise StartupError(exc.message, hint=exc.hint) from exc


def _anchor_log_key(config: CmcpConfig, attestor: Attestor) -> bytes | None:
    """The log key receipts must verify under, as read once at start (the file is checked
    by validate-config too, but may have changed since)."""
    anchor = config.trace.anchor
    if anchor is None:
        return None
    problem = log_key_problem(anchor.log_key)
    if problem is None:
        try:
            return anchor.log_key.read_bytes()
        except OSError as exc:
            problem = f"cannot read {anchor.log_key}: {exc.strerror or exc}"
    attestor.close()
    raise StartupError(
        f"trace.anchor.log_key: {problem}",
        hint="set it to the transparency service's public key (PEM), or remove trace.anchor",
    )


def open_store(
    config: CmcpConfig, attestor: Attestor
) -> tuple[AuditStore, StoreLock, RecoveryReport]:
    """Take the audit store for this process alone, record the process, and finish the
    sessions earlier processes left open, before anything is served."""
    path = config.audit.path
    try:
        lock = lock_store(path, GATEWAY_PROCESS)
    except StoreInUseError:
        attestor.close()
        raise
    store: AuditStore | None = None
    try:
        store = AuditStore(path, config.audit.durability)
        record_start(path, lock.holder)
        recovery = recover_sessions(store, attestor=attestor, claims_dir=config.claims.dir)
    except BaseException:
        if store is not None:
            store.close()
        lock.release()
        attestor.close()
        raise
    return store, lock, recovery


@dataclass(frozen=True)
class AttestorChoice:
    attestor: Attestor
    passed_over: tuple[str, ...]  # each provider tried before it, and why it was not taken


def choose_attestor(
    config: CmcpConfig, env: Environment, registry: ProviderRegistry
) -> AttestorChoice:
    """The configured provider, or with `auto` the first TEE found in DESIGN's order;
    software only when chosen (or nothing is found) and CMCP_DEV_MODE=1 says so. A provider
    whose collector cannot load here is passed over by `auto` and refused when named."""
    wanted = config.attestation.provider
    reasons: list[str] = []
    if wanted != software.NAME:
        for name in candidates(wanted):
            registered = registry.providers.get(name)
            if registered is None:
                reasons.append(f"{name}: no plugin installed (pip install {plugin_of(name)})")
                continue
            try:
                collector = load_collector(registered)
            except ProviderUnavailableError as exc:
                if wanted != "auto":
                    raise StartupError(
                        f"attestation provider {name!r} is unavailable here: {exc.reason}",
                        hint=exc.hint,
                    ) from exc
                reasons.append(f"{name}: unavailable here, {exc.reason}; {exc.hint}")
                continue
            settings = config.attestation.providers.get(name, {})
            detection = collector.detect(settings)
            if detection.present:
                attestor = Attestor(registered.spec, registered.version, collector, settings)
                return AttestorChoice(attestor, tuple(reasons))
            reasons.append(f"{name}: {detection.detail}")
        if wanted != "auto" or not env.dev_mode:
            raise StartupError(
                f"no attestation provider can run here ({'; '.join(reasons)})",
                hint=f"run on a TEE host with its plugin installed, or set {ENV_DEV_MODE}=1 "
                "for a software-only development gateway",
            )
    elif not env.dev_mode:
        raise StartupError(
            "software-only attestation proves nothing about the host",
            hint=f"set {ENV_DEV_MODE}=1 to run a development gateway deliberately",
        )
    software_attestor = Attestor.load(software.SPEC, _version_of(registry, software.NAME))
    return AttestorChoice(software_attestor, tuple(reasons))


def prepare_attestor(attestor: Attestor, facts: GatewayFacts) -> None:
    """Let the provider measure the gateway's policy into its platform before serving."""
    try:
        attestor.collector.prepare(facts, attestor.settings)
    except ProviderError as exc:
        attestor.close()
        raise StartupError(
            f"attestation provider {attestor.spec.name!r} cannot start: {exc.message}",
            hint=exc.hint,
        ) from exc


def check_measurement(attestor: Attestor, bundle_hash: str, catalog_hash: str) -> MeasurementCheck:
    """With `attestation.expected_measurement`, `trace.appraisal.required_status` or, for a
    provider the gateway appraises, `trace.appraisal.platform_policy` set, collect the first
    evidence (for a throwaway key's binding, as a session's) and refuse to start unless its
    measurement is pinned, its appraisal meets the required status and every verifier took
    the platform policy's values: a gateway that serves is one whose platform measured,
    and was appraised, as the operator requires, and whose sessions the policy lets open."""
    required = attestor.appraisal.required_status
    settings = [
        name
        for name, given in (
            ("attestation.expected_measurement", bool(attestor.pins)),
            ("trace.appraisal.required_status", required != "any"),
            (
                "trace.appraisal.platform_policy",
                bool(attestor.appraisal.platform_policy)
                and unappraised_reason(attestor.spec) is None,
            ),
        )
        if given
    ]
    if not settings:
        return MeasurementCheck()
    try:
        attested = attest_key(
            attestor,
            key=ClaimKey.generate(),
            bundle_hash=bundle_hash,
            catalog_hash=catalog_hash,
            gateway_digest=installation_digest(),
            process_id=GATEWAY_PROCESS,
        )
    except (MeasurementMismatchError, AppraisalBelowRequiredError) as exc:
        attestor.close()
        raise StartupError(f"the gateway does not serve: {exc.message}", hint=exc.hint) from exc
    except PlatformPolicyRefusedError as exc:
        attestor.close()
        raise StartupError(
            f"the gateway does not serve: {exc.message} (judged on the first evidence, so "
            "no session would open)",
            hint=exc.hint,
        ) from exc
    except AttestationUnavailableError as exc:
        attestor.close()
        raise StartupError(
            f"{' and '.join(settings)} {'are' if len(settings) > 1 else 'is'} set, but the "
            f"first evidence could not be collected to check it: {exc.message}",
            hint=exc.hint,
        ) from exc
    return MeasurementCheck(
        attestor.pins, attested.issuer.measurement, attested.issuer.measurement_pin
    )


def _version_of(registry: ProviderRegistry, name: str) -> str:
    registered = registry.providers.get(name)
    return registered.version if registered is not None else "builtin"


def _credentials(config: CmcpConfig, env: Environment, environ: Mapping[str, str]) -> Credentials:
    sources = token_sources(config, env, environ)
    agents = {source.digest: source.agent for source in sources if source.agent is not None}
    # the first operator source is the one the gateway prefers (token_sources' order)
    operator = next((source.digest for source in sources if source.agent is None), None)
    return Credentials(
        agents_by_digest=agents,
        operator_digest=operator,
        anonymous_allowed=env.dev_mode and not agents,
    )
