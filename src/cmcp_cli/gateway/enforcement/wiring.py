"""Joining the catalog to the policy engine: catalog tools as Cedar resources."""

from __future__ import annotations

from collections.abc import Iterable

from cmcp_cli.catalog.model import Catalog
from cmcp_cli.policy.engine import Authorizer, CompiledBundle
from cmcp_cli.policy.request import ToolResource


def tool_resources(catalog: Catalog) -> Iterable[ToolResource]:
    for tool in catalog.tools.values():
        yield ToolResource(
            name=tool.name, server=tool.server, groups=tool.groups, data_class=tool.data_class
        )


def authorizer_for(bundle: CompiledBundle, catalog: Catalog) -> Authorizer:
    return bundle.authorizer(tool_resources(catalog))
