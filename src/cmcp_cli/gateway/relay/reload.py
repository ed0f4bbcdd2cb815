"""Replacing the running policy bundle while the gateway serves (docs/policy.md).

`PolicyReloader.check` reads the bundle directory on a worker thread, and when it holds
another bundle than the running one, checks it against the operator's rule
(`policy.acceptance`), compiles it and builds its `ActivePolicy` there too, so that no
request waits for Cedar. Only then, on the event loop, one assignment makes it the policy
new sessions open under. A bundle that cannot be read, is not allowed or does not compile
is refused: the running one stays.

Every bundle taken and every refusal is a `policy_load` entry in the chain of every
session open at that moment; when none is open, in a session of its own (agent
`EVENT_AGENT`: session_start under the running bundle, the entry, session_end, a claim),
so that no event depends on a client being connected. A refusal is recorded once per
bundle hash and reason, not again at every interval while the directory stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmcp_cli.attestation.api import GatewayFacts, ProviderError
from cmcp_cli.attestation.measurement import installation_digest
from cmcp_cli.audit.entry import timestamp
from cmcp_cli.audit.recorder import ChainEndedError
from cmcp_cli.errors import CmcpError, Problem
from cmcp_cli.evidence.attesting import AttestationUnavailableError
from cmcp_cli.evidence.claim_files import write_claim
from cmcp_cli.evidence.session import EvidenceSession
from cmcp_cli.gateway.preflight.reload import EVENT_AGENT
from cmcp_cli.gateway.relay.sessions import SessionRegistry
from cmcp_cli.gateway.runtime import ActivePolicy, active_policy
from cmcp_cli.policy.acceptance import Acceptance, BundleRefusedError, accept
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import compile_bundle

_LOG = logging.getLogger(__name__)

GRACE_REASON = "policy reloaded"  # session_end reason of a session the grace period ended
EVENT_REASON = "policy event recorded"  # session_end reason of an event's own session

# Why a bundle was refused, as /metrics counts it (the full reason is logged and audited).
UNREADABLE = "unreadable"
NOT_ALLOWED = "not_allowed"
INVALID = "invalid"
ATTESTATION = "attestation"


@dataclass(frozen=True)
class Refusal:
    bundle_hash: str | None  # None when the directory could not be read as a bundle
    category: str
    reason: str


@dataclass(frozen=True)
class Taken:
    policy: ActivePolicy
    acceptance: Acceptance


class PolicyReloader:
    def __init__(self, sessions: SessionRegistry) -> None:
        self.sessions = sessions
        self.runtime = sessions.runtime
        self._lock = asyncio.Lock()
        self._last_refusal: tuple[str | None, str] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self.metrics = sessions.metrics
        self.last: dict[str, Any] | None = None  # the last event, for /readyz

    @property
    def configured(self) -> bool:
        return self.runtime.config.policy.reload.configured

    def status(self) -> dict[str, Any]:
        """What /readyz shows: the running bundle and the last reload event."""
        active = self.runtime.active
        return {
            "bundle_hash": active.hash,
            "version": active.bundle.source.manifest.version,
            "generation": active.generation,
            "reload": {
                "configured": self.configured,
                "interval_seconds": self.runtime.config.policy_reload_interval_seconds,
                "taken": self.metrics.policy_taken,
                "refused": sum(self.metrics.policy_refused.values()),
                "last": self.last,
            },
        }

    async def check(self, trigger: str) -> dict[str, Any] | None:
        """Look at the bundle directory once; the event recorded, or None when the
        directory holds the running bundle (or a refusal already recorded)."""
        async with self._lock:
            running = self.runtime.active
            outcome = await self.sessions.in_thread(self._evaluate, running)
            if outcome is None:
                self._last_refusal = None
                return None
            if isinstance(outcome, Refusal):
                key = (outcome.bundle_hash, outcome.reason)
                if key == self._last_refusal:
                    return None
                self._last_refusal = key
                self.metrics.policy_refused[outcome.category] += 1
                event = self._event(trigger, outcome.bundle_hash, taken=False, running=running)
                event["reason"] = outcome.reason
                _LOG.warning(
                    "policy bundle %s refused (%s); still serving %s",
                    outcome.bundle_hash or self.runtime.config.policy_bundle_path,
                    outcome.reason,
                    running.hash,
                )
            else:
                self._last_refusal = None
                self.runtime.active = outcome.policy  # the one swap: new sessions take it
                self.metrics.policy_taken += 1
                self.metrics.policy_generation = outcome.policy.generation
                event = self._event(trigger, outcome.policy.hash, taken=True, running=running)
                event["rule"] = outcome.acceptance.rule
                event["reason"] = outcome.acceptance.detail
                event["policy_version"] = outcome.policy.bundle.source.manifest.version
                event["policy_count"] = len(outcome.policy.bundle.policies)
                _LOG.warning(
                    "policy bundle %s taken (%s); new sessions open under it, "
                    "sessions open under %s keep it",
                    outcome.policy.hash,
                    outcome.acceptance.detail,
                    running.hash,
                )
                self._start_grace(outcome.policy)
            self.last = event
            await self._record(event)
            return event

    def _event(
        self, trigger: str, bundle_hash: str | None, *, taken: bool, running: ActivePolicy
    ) -> dict[str, Any]:
        return {
            "trigger": trigger,
            "at": timestamp(datetime.now(UTC)),
            "bundle_hash": bundle_hash,
            "taken": taken,
            "previous_bundle_hash": running.hash,
        }

    def _evaluate(self, running: ActivePolicy) -> Refusal | Taken | None:
        """On a worker thread: read, check, compile. Never raises for a bad bundle."""
        config = self.runtime.config
        try:
            source = read_bundle(config.policy_bundle_path)
        except CmcpError as exc:
            return Refusal(None, UNREADABLE, _describe(exc, config.policy_bundle_path))
        if source.hash == running.hash:
            return None
        try:
            acceptance = accept(
                config.policy.reload,
                source,
                running.bundle.source.manifest.version,
                self.runtime.reload_keys,
            )
        except BundleRefusedError as exc:
            return Refusal(source.hash, NOT_ALLOWED, _describe(exc, source.root))
        try:
            compiled = compile_bundle(source)
            policy = active_policy(
                config, compiled, self.runtime.catalog, generation=running.generation + 1
            )
        except CmcpError as exc:
            return Refusal(source.hash, INVALID, _describe(exc, source.root))
        except ValueError as exc:  # Cedar's own, past what compile_bundle reports
            return Refusal(source.hash, INVALID, f"the bundle does not compile: {exc}")
        # Last, once nothing else can refuse it: a provider that measures the bundle (the
        # TPM extends its PCR) adds this one to its measurement before any session uses it.
        attestor = self.runtime.attestor
        facts = GatewayFacts(
            bundle_hash=source.hash,
            catalog_hash=self.runtime.catalog.hash,
            gateway_digest=installation_digest(),
        )
        parts = [(attestor.spec.name, attestor.collector.prepare, attestor.settings)]
        parts += [(d.spec.name, d.collector.prepare, d.settings) for d in attestor.devices]
        for name, prepare, settings in parts:
            try:
                prepare(facts, settings)
            except ProviderError as exc:
                hint = f" (hint: {exc.hint})" if exc.hint else ""
                reason = f"the {name} provider cannot measure it: {exc.message}{hint}"
                return Refusal(source.hash, ATTESTATION, reason)
        return Taken(policy, acceptance)

    async def _record(self, event: dict[str, Any]) -> None:
        open_sessions = self.sessions.open_sessions()
        if not open_sessions:
            try:
                await self.sessions.in_thread(self._record_alone, event)
            except AttestationUnavailableError as exc:
                _LOG.error("policy event not audited: %s (%s)", exc.message, event)
            return
        async with self.sessions.durably():
            for session in open_sessions:
                with contextlib.suppress(ChainEndedError):  # it ended meanwhile
                    session.evidence.recorder.policy_load(event)

    def _record_alone(self, event: dict[str, Any]) -> None:
        """On a worker thread: a session that records `event` and nothing else."""
        runtime = self.runtime
        session_id = secrets.token_urlsafe(18)
        evidence = EvidenceSession(
            store=runtime.store,
            session_id=session_id,
            policy=runtime.active.session,
            attestor=runtime.attestor,
            agent=EVENT_AGENT,
        )
        evidence.recorder.policy_load(event)
        write_claim(
            runtime.claims_dir,
            session_id,
            evidence.close(reason=EVENT_REASON),
            queued=self.sessions.anchor_intake,
        )

    def _start_grace(self, taken: ActivePolicy) -> None:
        grace = self.runtime.config.policy.reload.grace_seconds
        if grace is None:
            return
        task = asyncio.create_task(self._end_older(taken.generation, grace))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _end_older(self, generation: int, grace: int) -> None:
        """After the grace period, close every session opened under a bundle older than
        the one taken at `generation` (its claim is written as on any close)."""
        await asyncio.sleep(grace)
        older = [s for s in self.sessions.open_sessions() if s.policy.generation < generation]
        await asyncio.gather(*(self.sessions.close(s, GRACE_REASON) for s in older))

    async def run(self, interval: float) -> None:
        """Check every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.check_logged("interval")

    async def check_logged(self, trigger: str) -> None:
        """`check`, for a loop that must outlive one failed check: the running bundle
        stays, and the failure is logged."""
        try:
            await self.check(trigger)
        except Exception:  # noqa: BLE001 - the loop goes on; the running bundle stays
            _LOG.exception("policy reload check failed; the running bundle stays")

    async def stop(self) -> None:
        for task in list(self._timers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _describe(exc: CmcpError, root: Path) -> str:
    """The error, its first problems (each at its file and line) and its hint, on one
    line; paths inside the bundle relative to it, since the reason is audited and shown
    on /readyz."""
    details = "; ".join(_located(problem) for problem in exc.problems[:5])
    text = f"{exc.message}: {details}" if details else exc.message
    if exc.hint:
        text += f" (hint: {exc.hint})"
    return text.replace(f"{root}{os.sep}", "").replace(str(root), "the bundle directory")


def _located(problem: Problem) -> str:
    where = problem.file or ""
    if problem.line:
        where += f":{problem.line}"
    return f"{where} {problem.message}".strip()
