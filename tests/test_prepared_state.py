"""`PreparedState`, the prepare/collect/close state every device collector keeps: each
state is released once, when replaced or closed; collect refuses without prepare and on
settings other than the prepared ones."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cmcp_cli.attestation.api import ProviderError
from cmcp_cli.attestation.prepared import PreparedState


@dataclass(frozen=True)
class Opened:
    settings: str
    name: str


def test_each_state_is_released_once_when_replaced_or_closed() -> None:
    released: list[str] = []
    state: PreparedState[Opened] = PreparedState("Demo", lambda s: released.append(s.name))
    with state.lock:
        state.replace_locked(Opened("a", "first"))
        state.replace_locked(Opened("a", "second"))
    assert released == ["first"]
    state.close()
    state.close()
    assert released == ["first", "second"]
    assert state.current is None


def test_collect_needs_the_prepared_settings() -> None:
    state: PreparedState[Opened] = PreparedState("Demo", lambda _: None)
    with state.lock, pytest.raises(RuntimeError, match=r"Demo\.collect without prepare"):
        state.for_collect_locked("a", "changed", hint="restart")
    with state.lock:
        state.replace_locked(Opened("a", "first"))
        assert state.for_collect_locked("a", "changed", hint="restart").name == "first"
        with pytest.raises(ProviderError) as refused:
            state.for_collect_locked("b", "the settings changed", hint="restart the gateway")
    assert (refused.value.message, refused.value.hint) == (
        "the settings changed",
        "restart the gateway",
    )
