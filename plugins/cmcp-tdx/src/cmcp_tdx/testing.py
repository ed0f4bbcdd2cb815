"""Test support for the TDX collector: a configfs-tsm stand-in that behaves as the kernel's
report directory does for one TDX guest, so the collector's configfs flow runs anywhere."""

from __future__ import annotations

import shutil
from pathlib import Path


class FakeTsm:
    """A configfs-tsm stand-in: `mkdir` makes an entry with the kernel's attribute files,
    `outblob` holds the quote given, `rmdir` removes the entry (a real configfs entry is
    removed with its attribute files by one rmdir)."""

    def __init__(self, root: Path, outblob: bytes, provider: str = "tdx_guest") -> None:
        self.root, self.outblob, self.provider = root, outblob, provider
        self.created: list[Path] = []
        self.removed: list[Path] = []

    def mkdir(self, entry: Path) -> None:
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        (entry / "outblob").write_bytes(self.outblob)
        self.created.append(entry)

    def rmdir(self, entry: Path) -> None:
        shutil.rmtree(entry)
        self.removed.append(entry)
