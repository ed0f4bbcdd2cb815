"""What a collector's `prepare` establishes (an open TPM or GPU handle, loaded keys) and its
`collect` reads, under the one lock that serialises `detect`, `prepare`, `collect` and
`close` (a device serves one request at a time). Replacing or closing the state releases
the previous one exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from cmcp_cli.attestation.api import ProviderError


class _HasSettings(Protocol):
    @property
    def settings(self) -> object: ...


P = TypeVar("P", bound=_HasSettings)


class PreparedState(Generic[P]):
    """`lock` guards `current`; the `*_locked` methods expect it held."""

    def __init__(self, owner: str, release: Callable[[P], None]) -> None:
        self.owner = owner  # the collector's class name, for programming errors
        self.lock = threading.Lock()
        self.current: P | None = None
        self._release = release

    def replace_locked(self, state: P | None) -> None:
        """Make `state` current, releasing the previous state."""
        previous, self.current = self.current, state
        if previous is not None:
            self._release(previous)

    def for_collect_locked(self, settings: object, changed: str, hint: str) -> P:
        """The current state for `collect` with `settings`: `RuntimeError` without a
        `prepare` (or after `close`), `ProviderError(changed, hint=hint)` when the settings
        differ from the ones prepared (the device or key collect would use is not the one
        prepare checked)."""
        state = self.current
        if state is None:
            raise RuntimeError(f"{self.owner}.collect without prepare (or after close)")
        if settings != state.settings:
            raise ProviderError(changed, hint=hint)
        return state

    def close(self) -> None:
        with self.lock:
            self.replace_locked(None)
