"""Keeping open sessions' evidence fresh: one gateway-wide timer, off the request path.

A session's evidence is due for renewal once `RENEW_AT` of `attestation.validity_seconds`
has passed since it was collected, so fresh evidence is recorded before the old goes
stale. The timer (`renew_sessions`) looks at every open session each tick and renews the
due ones on the registry's thread pool. When a renewal finds the evidence stale,
`staleness_policy` decides: `fail_closed` marks the session stale (`GatewaySession.stale`)
and every later request of it is refused with -32062; `warn_only` lets it go on and
tries again a tenth of the validity later, each failed try one more stale entry. A
device attested at the start that is not attested again fails the session closed under
either policy. The per-request cost is the one check of `stale`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cmcp_cli.audit.recorder import ChainEndedError
from cmcp_cli.audit.store import AuditStoreError
from cmcp_cli.config import AttestationConfig
from cmcp_cli.evidence.freshness import FAIL_CLOSED, renew_evidence

if TYPE_CHECKING:
    from cmcp_cli.gateway.relay.sessions import GatewaySession, SessionRegistry

RENEW_AT = 0.8  # of validity_seconds: when a session's evidence is attested again
MIN_TICK_SECONDS = 0.25
MAX_TICK_SECONDS = 30.0
_LOG = logging.getLogger(__name__)


def tick_seconds(config: AttestationConfig) -> float:
    """How often the timer looks: a twentieth of the validity, within [0.25 s, 30 s], so
    a renewal starts before 85% of the validity has passed (for validity_seconds >= 5)."""
    return min(max(config.validity_seconds / 20, MIN_TICK_SECONDS), MAX_TICK_SECONDS)


def retry_seconds(config: AttestationConfig) -> float:
    """After a stale renewal under warn_only: a tenth of the validity (at least a tick),
    so a platform that stays changed adds ten entries per validity period, not one a tick."""
    return max(config.validity_seconds / 10, tick_seconds(config))


def renewal_time(attested_at: float, config: AttestationConfig) -> float:
    return attested_at + RENEW_AT * config.validity_seconds


def stale_message(reason: str) -> str:
    return (
        f"the session's attestation went stale ({reason}); under attestation.staleness_policy "
        "fail_closed it takes no further request: open a new session"
    )


async def renew_sessions(registry: SessionRegistry) -> None:
    """Run until cancelled: each tick, renew the evidence of every session that is due."""
    config = registry.runtime.config.attestation
    while True:
        await asyncio.sleep(tick_seconds(config))
        now = time.monotonic()
        for session in registry.open_sessions():
            if session.stale is None and session.renew_at <= now:
                await renew_one(registry, session)


async def renew_one(registry: SessionRegistry, session: GatewaySession) -> None:
    runtime = registry.runtime
    config = runtime.config.attestation
    started = time.monotonic()
    try:
        renewal = await registry.in_thread(
            renew_evidence, session.evidence, runtime.attestor, policy=config.staleness_policy
        )
    except ChainEndedError:
        return  # closed meanwhile: its claim carries what the chain recorded
    except AuditStoreError as exc:
        # Nothing could be recorded, so the session cannot show fresh evidence either:
        # whatever the policy, it is refused (the audit store fails closed for all calls).
        session.stale = f"its re-attestation could not be recorded: {exc.message}"
        return
    if renewal.fresh:
        session.renew_at = renewal_time(started, config)
        return
    reason = renewal.reason or "stale evidence"
    _LOG.warning("session %s: %s (%s)", session.id, reason, renewal.policy)
    if renewal.policy == FAIL_CLOSED:
        session.stale = reason
    else:
        session.renew_at = time.monotonic() + retry_seconds(config)
