"""Options several commands take, declared once so that they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print a JSON report on stdout (and nothing else).")
]
# The config `cmcp start` serves and `cmcp validate-config` checks.
ConfigSource = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The config file. Default: cmcp-config.yaml here, else the config the "
        "environment describes (CEDAR_POLICY_PATH, UPSTREAM_MCP_URL; docs/configuration.md).",
        show_default=False,
    ),
]
