"""Fixtures shared by the cmcp-opaque tests: a token issuer with its pinned JWKS, and the
token service double as a real HTTPS process on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmcp_opaque.testing import TokenIssuer
from cmcp_opaque.token_service import RunningService


@pytest.fixture(scope="session")
def issuer() -> TokenIssuer:
    return TokenIssuer.create()


@pytest.fixture(scope="session")
def jwks_path(issuer: TokenIssuer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pins") / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = RunningService.start(tmp_path_factory.mktemp("token-service"))
    yield running
    running.stop()
