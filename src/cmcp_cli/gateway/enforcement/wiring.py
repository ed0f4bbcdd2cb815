"""Joining the catalog to the policy engine: catalog tools as Cedar resources."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def server_data_class(tools: Iterable[ToolResource], server: str, order: Sequence[str]) -> str:
    """The data class of an upstream server, for the messages that are not tool calls:
    the most sensitive class of its catalog tools by `order` (a class the order does not
    know ranks above all). A server with no catalog tools is unknown, and unknown
    sensitivity is not low sensitivity: it gets the order's most sensitive class."""
    classes = {tool.data_class for tool in tools if tool.server == server}
    if not classes:
        return order[-1]
    return max(classes, key=lambda c: (order.index(c) if c in order else len(order), c))
