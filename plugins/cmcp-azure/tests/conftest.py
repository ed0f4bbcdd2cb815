"""Fixtures shared by the cmcp-azure tests: the genuine Azure sets from ../shared, skipping
with the reason when they are absent (`cmcp_azure.testing.vectors` reads them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_azure.testing import vectors
from cmcp_azure.testing.vectors import AzureSet
from cmcp_cli.testing.vectors import shared_vectors

REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def azure_vectors() -> Path:
    """The genuine Azure CVM sets (MANIFEST.md there states what each must do)."""
    return shared_vectors(REPOSITORY, "azure-cvm")


@pytest.fixture(scope="session")
def milan_set(azure_vectors: Path) -> AzureSet:
    return vectors.milan_set(azure_vectors)


@pytest.fixture(scope="session")
def userdata_set(azure_vectors: Path) -> AzureSet:
    return vectors.userdata_set(azure_vectors)


@pytest.fixture(scope="session")
def tdx_set(azure_vectors: Path) -> AzureSet:
    return vectors.tdx_set(azure_vectors)
