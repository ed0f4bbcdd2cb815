"""The config of a container-style start, built from environment variables.

With no config file, `CEDAR_POLICY_PATH` and `UPSTREAM_MCP_URL` (and the optional
variables of `ENV_START`) build the same data a `cmcp-config.yaml` would hold: a
`ConfigDocument` that is validated and checked exactly as a file is, so there is one
set of rules for both. Secrets are never copied into it: agent and operator tokens stay
where every start reads them (`CMCP_BEARER_TOKEN`, `CMCP_OPERATOR_TOKEN`), and the
upstream's credential is named by the variable that holds it (`headers_from_env`).

Without `CMCP_CATALOG_PATH` the catalog is pinned at first contact under the state
directory (`catalog_pinning: first-contact`, docs/configuration.md).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cmcp_cli.config import (
    ENV_ALLOWED_HOSTS,
    ENV_ATTESTATION_PROVIDER,
    ENV_BEARER_TOKEN,
    ENV_CATALOG_PATH,
    ENV_FIRST_CONTACT_DATA_CLASS,
    ENV_LISTEN_ADDR,
    ENV_OPERATOR_TOKEN,
    ENV_POLICY_PATH,
    ENV_START,
    ENV_STATE_DIR,
    ENV_TRUST_DOMAIN,
    ENV_UPSTREAM_AUTHORIZATION_ENV,
    ENV_UPSTREAM_NAME,
    ENV_UPSTREAM_URL,
)
from cmcp_cli.config_document import ENVIRONMENT, ConfigDocument
from cmcp_cli.errors import ConfigError, Problem

DEFAULT_UPSTREAM_NAME = "upstream"  # the one upstream's name, which catalog tools route to
DEFAULT_LISTEN_ADDR = "127.0.0.1:8443"
DEFAULT_STATE_DIR = "cmcp-state"
REQUIRED = (ENV_POLICY_PATH, ENV_UPSTREAM_URL)
_REQUIRED_HINTS = {
    ENV_POLICY_PATH: "set it to the policy bundle directory (*.cedar and manifest.json)",
    ENV_UPSTREAM_URL: "set it to the upstream MCP server's streamable HTTP endpoint, "
    "e.g. http://mcp-server:8080/mcp",
}


def _value(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value; set but empty counts as unset, as container runtimes pass
    `-e NAME=` for a variable meant to be absent."""
    value = environ.get(name, "").strip()
    return value or None


def start_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The variables of the environment start that are set."""
    return tuple(name for name in ENV_START if _value(environ, name) is not None)


def secret_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The variables whose values are secrets this start reads (named, never shown)."""
    names = [name for name in (ENV_BEARER_TOKEN, ENV_OPERATOR_TOKEN) if environ.get(name)]
    credential = _value(environ, ENV_UPSTREAM_AUTHORIZATION_ENV)
    if credential is not None:
        names.append(credential)
    return tuple(names)


def environment_document(environ: Mapping[str, str], cwd: Path) -> ConfigDocument:
    """The config the environment describes; relative paths are relative to `cwd`.
    `ConfigError` names each required variable that is not set; every other problem is
    found by validating and checking the document, as for a file."""
    missing = [name for name in REQUIRED if _value(environ, name) is None]
    if missing:
        raise ConfigError(
            f"the config from the environment needs {' and '.join(missing)}",
            problems=[
                Problem(f"{name} is not set", file=ENVIRONMENT, hint=_REQUIRED_HINTS[name])
                for name in missing
            ],
            hint="docs/configuration.md lists every variable of the environment start",
        )
    if urlsplit(environ[ENV_UPSTREAM_URL].strip()).password is not None:
        # never sent (cMCP authenticates to an upstream with headers only), and printed
        raise ConfigError(
            f"{ENV_UPSTREAM_URL} holds a password (user:password@host)",
            problems=[
                Problem(
                    f"{ENV_UPSTREAM_URL} holds a password, which is not sent to the upstream",
                    file=f"{ENVIRONMENT} ({ENV_UPSTREAM_URL})",
                    hint=f"remove it from the URL; put the Authorization header's value in a "
                    f"variable and name that variable in {ENV_UPSTREAM_AUTHORIZATION_ENV}",
                )
            ],
        )
    data: dict[str, Any] = {}
    variables: dict[str, str] = {}

    def put(key: str | tuple[str, ...], value: Any, variable: str | None) -> None:
        """Set the setting at `key` (dotted, or the keys themselves when one may hold a
        dot) and remember the variable that set it."""
        *sections, leaf = key.split(".") if isinstance(key, str) else key
        target = data
        for part in sections:
            target = target.setdefault(part, {})
        target[leaf] = value
        if variable is not None:
            variables[key if isinstance(key, str) else ".".join(key)] = variable

    def path(value: str) -> str:
        return str(cwd / Path(value).expanduser())

    state = _value(environ, ENV_STATE_DIR)
    state_dir = path(state or DEFAULT_STATE_DIR)
    catalog = _value(environ, ENV_CATALOG_PATH)
    put("policy_bundle_path", path(environ[ENV_POLICY_PATH].strip()), ENV_POLICY_PATH)
    if catalog is not None:
        put("catalog_path", path(catalog), ENV_CATALOG_PATH)
        put("catalog_pinning", "explicit", ENV_CATALOG_PATH)
    else:
        put("catalog_path", str(Path(state_dir) / "catalog.json"), state and ENV_STATE_DIR)
        put("catalog_pinning", "first-contact", None)
    data_class = _value(environ, ENV_FIRST_CONTACT_DATA_CLASS)
    if data_class is not None:
        put("first_contact_data_class", data_class, ENV_FIRST_CONTACT_DATA_CLASS)
    listen = _value(environ, ENV_LISTEN_ADDR)
    put("listen_addr", listen or DEFAULT_LISTEN_ADDR, listen and ENV_LISTEN_ADDR)
    hosts = _value(environ, ENV_ALLOWED_HOSTS)
    if hosts is not None:
        names = [name.strip() for name in hosts.split(",") if name.strip()]
        put("allowed_hosts", names, ENV_ALLOWED_HOSTS)
    name = _value(environ, ENV_UPSTREAM_NAME)
    upstream = ("upstreams", name or DEFAULT_UPSTREAM_NAME)
    url = environ[ENV_UPSTREAM_URL].strip()
    put(upstream, {"transport": "streamable-http", "url": url}, name and ENV_UPSTREAM_NAME)
    put((*upstream, "url"), url, ENV_UPSTREAM_URL)
    credential = _value(environ, ENV_UPSTREAM_AUTHORIZATION_ENV)
    if credential is not None:
        put(
            (*upstream, "headers_from_env"),
            {"Authorization": credential},
            ENV_UPSTREAM_AUTHORIZATION_ENV,
        )
    provider = _value(environ, ENV_ATTESTATION_PROVIDER)
    if provider is not None:
        put("attestation.provider", provider, ENV_ATTESTATION_PROVIDER)
    put("audit.path", str(Path(state_dir) / "audit.db"), state and ENV_STATE_DIR)
    put("claims.dir", str(Path(state_dir) / "claims"), state and ENV_STATE_DIR)
    trust_domain = _value(environ, ENV_TRUST_DOMAIN)
    if trust_domain is not None:
        put("claims.trust_domain", trust_domain, ENV_TRUST_DOMAIN)
    return ConfigDocument(path=None, data=data, node=None, base_dir=cwd, variables=variables)


HIDDEN = "hidden"


def shown_url(url: str) -> str:
    """`url` as it may be printed: each query value (which may be a key) hidden."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = urlencode([(key, HIDDEN) for key, _ in parse_qsl(parts.query, True)])
    return urlunsplit(parts._replace(query=query))


def shown_data(document: ConfigDocument) -> dict[str, Any]:
    """The document as it may be printed: upstream URLs `shown_url`; nothing else in it
    is secret."""
    data = copy.deepcopy(document.data)
    for upstream in (data.get("upstreams") or {}).values():
        if isinstance(upstream, dict) and isinstance(upstream.get("url"), str):
            upstream["url"] = shown_url(upstream["url"])
    return data
