"""cMCP: a gateway that makes MCP tool calls provable."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmcp-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
