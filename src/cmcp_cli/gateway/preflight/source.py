"""Which config `cmcp start` serves and `cmcp validate-config` checks.

The file given with `--config`; else `cmcp-config.yaml` in the working directory; else,
when `CEDAR_POLICY_PATH` or `UPSTREAM_MCP_URL` is set, the config the environment
describes (`config_environment`). A `cmcp-config.yaml` found there while either is set
is refused: the operator meant one of the two, and serving the other would enforce a
policy nobody chose. When a file is served, the environment start's variables that are
set are named in a warning as not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cmcp_cli.config_document import ConfigDocument, read_config_document
from cmcp_cli.config_environment import REQUIRED, environment_document, start_variables
from cmcp_cli.errors import Problem, Severity, UsageError

DEFAULT_CONFIG = Path("cmcp-config.yaml")


def start_source(config: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to serve, or None for the config the environment describes;
    `UsageError` when there is no config, or two. `CEDAR_POLICY_PATH` or `UPSTREAM_MCP_URL`
    asks for the environment start; the other variables only shape it, so an image may
    set them by default without making a mounted config file ambiguous."""
    if config is not None:
        return config
    found = cwd / DEFAULT_CONFIG
    variables = start_variables(environ)
    asked = [name for name in REQUIRED if name in variables]
    if found.exists() and asked:
        raise UsageError(
            f"both {found} and the environment start ({', '.join(asked)}) describe a "
            "config; which one to serve is ambiguous",
            hint=f"pass --config {DEFAULT_CONFIG} to serve the file (the variables are then "
            f"not read), or unset the variables, or start from another directory to use them",
        )
    if found.exists():
        return found
    if asked:
        return None
    shaping = (
        f"; {', '.join(variables)} {'is' if len(variables) == 1 else 'are'} set, but the "
        f"environment start needs {' and '.join(REQUIRED)}"
        if variables
        else ""
    )
    raise UsageError(
        f"no config: there is no {DEFAULT_CONFIG} in {cwd} and no --config was given{shaping}",
        hint=f"pass --config PATH, or set {' and '.join(REQUIRED)} to start from the "
        "environment (docs/configuration.md)",
    )


def start_document(config: Path | None, environ: Mapping[str, str], cwd: Path) -> ConfigDocument:
    """The config document to serve (`start_source`). Raises `ConfigError` for a file that
    is not YAML or an environment that lacks a required variable."""
    source = start_source(config, environ, cwd)
    if source is None:
        return environment_document(environ, cwd)
    return read_config_document(source)


def ignored_start_variables(path: Path, environ: Mapping[str, str]) -> list[Problem]:
    """A warning naming the environment start's variables, which a config file's start
    does not read."""
    variables = start_variables(environ)
    if not variables:
        return []
    return [
        Problem(
            f"{', '.join(variables)} {'is' if len(variables) == 1 else 'are'} set but not "
            f"read: the config file {path} is served",
            hint="unset them, or start without --config from a directory with no "
            f"{DEFAULT_CONFIG} to build the config from the environment",
            severity=Severity.WARNING,
        )
    ]


def first_contact_note(catalog_path: Path) -> str:
    return (
        f"catalog_path {catalog_path} does not exist yet: catalog_pinning is first-contact, "
        "so the first start writes it with every tool the upstreams advertise, each approved "
        "as it is (trust on first use); later starts check the upstreams against it"
    )
