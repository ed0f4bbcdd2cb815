"""Fixtures shared by the tests."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from cmcp_cli.testing.transparency import RunningTransparency
from tests.conformance.suite import TABLE_PROPERTY
from tests.gateway_support import Served, start_gateway, start_upstream, write_config
from tests.matrix_rig import Matrix, running_matrix
from tests.relay_rig import Rig, running_rig
from tests.support import MANIFEST, QUICKSTART, BundleFactory

# CI runs the same examples every time; a developer's runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    """Write a bundle: `make_bundle({"a.cedar": "...", "schema.cedarschema": "..."})`."""
    counter = 0

    def factory(
        files: Mapping[str, str | bytes], *, manifest: Mapping[str, Any] | None = MANIFEST
    ) -> Path:
        nonlocal counter
        counter += 1
        root = tmp_path / f"bundle{counter}"
        root.mkdir()
        if manifest is not None:
            (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        return root

    return factory


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A private copy of examples/quickstart that a test may edit."""
    target = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, target, ignore=shutil.ignore_patterns(".state", "__pycache__"))
    return target


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The quickstart's demo MCP server (official SDK), shared by a test module."""
    served = start_upstream(tmp_path_factory.mktemp("upstream"))
    yield served
    served.stop()


@pytest.fixture
def gateway(tmp_path: Path, upstream: Served) -> Iterator[Served]:
    """`cmcp start` in dev mode in front of `upstream`, its state under `tmp_path`."""
    served = start_gateway(write_config(tmp_path, upstream.url))
    yield served
    served.stop()


# The relay rigs: each test module that uses one gets its own gateway and upstreams.


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_rig(tmp_path_factory.mktemp("relay")) as running:
        yield running


@pytest.fixture
def relay(rig: Rig) -> tuple[Served, Path]:
    return rig.gateway, rig.state


@pytest.fixture(scope="module")
def matrix_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with running_matrix(tmp_path_factory.mktemp("matrix")) as running:
        yield running


@pytest.fixture
def matrix(matrix_stack: Matrix) -> Matrix:
    """The module's matrix; claims written before the test are not its own (even those of
    a test that failed)."""
    matrix_stack.seen_claims = set(matrix_stack.claims.glob("*.claim.json"))
    return matrix_stack


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTransparency]:
    """The transparency service double (a real process serving TLS on loopback), shared
    by a test module."""
    with RunningTransparency.start(tmp_path_factory.mktemp("ts")) as running:
        yield running


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The conformance suites' side-by-side tables, each recorded by its test."""
    tables = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == TABLE_PROPERTY
    ]
    if tables:
        terminalreporter.write_sep("=", "MCP conformance, directly and through the gateway")
        for table in tables:
            terminalreporter.write_line(table)
