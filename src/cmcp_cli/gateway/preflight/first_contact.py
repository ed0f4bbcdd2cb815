"""Pinning the catalog at first contact (`catalog_pinning: first-contact`).

Before a gateway whose catalog file does not exist yet serves anything, it lists every
upstream's tools and writes them to `catalog_path`, each approved as advertised: data
class `first_contact_data_class`, groups from its annotations (`groups_for`). This is
trust on first use: what the upstreams advertised then becomes the pin that later starts
detect drift against. An existing file is never replaced, so a later start (or another
process starting at the same moment) uses the catalog that was pinned first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FirstContact:
    """A catalog written at first contact."""

    path: Path
    data_class: str
    servers: Mapping[str, int]  # upstream name -> tools pinned from it

    @property
    def tools(self) -> int:
        return sum(self.servers.values())
