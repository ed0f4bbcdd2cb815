"""The genuine vendor evidence that tests read in place from the folder beside the
repository, `../shared/attestation-vectors` (never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest


def shared_vectors(repository: Path, name: str) -> Path:
    """`<repository>/../shared/attestation-vectors/<name>`; the test is skipped, naming where
    they were looked for, when they are absent."""
    folder = repository.parent / "shared" / "attestation-vectors" / name
    if not folder.is_dir():
        pytest.skip(f"the shared attestation vectors are not at {folder}")
    return folder
