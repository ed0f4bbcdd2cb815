"""The individual checks behind `check_config`: each returns the problems it finds."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cmcp_cli.catalog.model import Catalog
from cmcp_cli.config import (
    ENV_BEARER_TOKEN,
    ENV_DEV_MODE,
    ENV_OPERATOR_TOKEN,
    CmcpConfig,
    Environment,
    HttpUpstream,
    StdioUpstream,
    TLSConfig,
)
from cmcp_cli.config_document import ConfigDocument
from cmcp_cli.errors import Problem, Severity
from cmcp_cli.gateway.upstream.spawn import resolve_executable

MIN_TOKEN_LENGTH = 32
_TOKEN_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105


class Locator:
    """Makes problems that point at a key of the config file."""

    def __init__(self, document: ConfigDocument) -> None:
        self.document = document

    def error(self, loc: tuple[str | int, ...], message: str, hint: str | None = None) -> Problem:
        return self._problem(loc, message, hint, Severity.ERROR)

    def warning(self, loc: tuple[str | int, ...], message: str, hint: str | None = None) -> Problem:
        return self._problem(loc, message, hint, Severity.WARNING)

    def _problem(
        self, loc: tuple[str | int, ...], message: str, hint: str | None, severity: Severity
    ) -> Problem:
        prefix = ".".join(str(p) for p in loc)
        return Problem(
            f"{prefix}: {message}" if prefix else message,
            file=self.document.where(loc),
            line=self.document.line_of(loc),
            hint=hint,
            severity=severity,
        )


def check_hosts(config: CmcpConfig, at: Locator) -> list[Problem]:
    """A wildcard bind with no allowed_hosts serves only requests whose Host is a loopback
    name: remote clients would all be refused (421, DNS rebinding protection)."""
    listen = config.listen_addr
    try:
        wildcard = ipaddress.ip_address(listen.host).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard or config.allowed_hosts:
        return []
    return [
        at.warning(
            ("listen_addr",),
            f"{listen} listens on every interface, but allowed_hosts is empty: only requests "
            "whose Host header is a loopback name are served, others are refused (421)",
            hint="list the names clients reach the gateway by in allowed_hosts",
        )
    ]


def check_auth(
    config: CmcpConfig, env: Environment, environ: Mapping[str, str], at: Locator
) -> list[Problem]:
    problems: list[Problem] = []
    listen = config.listen_addr
    auth = config.auth
    has_tokens = bool(auth.bearer_tokens) or env.bearer_token is not None
    has_mtls = config.tls.client_ca_file is not None
    if not listen.is_loopback and not (has_tokens or has_mtls):
        problems.append(
            at.error(
                ("listen_addr",),
                f"{listen} is reachable from other hosts but no agent credential is configured",
                hint=f"set {ENV_BEARER_TOKEN}, add auth.bearer_tokens or tls.client_ca_file, "
                "or listen on 127.0.0.1",
            )
        )
    if env.dev_mode and not listen.is_loopback:
        problems.append(
            at.error(
                ("listen_addr",),
                f"{ENV_DEV_MODE}=1 admits anonymous agents, so it listens on loopback only",
                hint=f"unset {ENV_DEV_MODE} or listen on 127.0.0.1",
            )
        )
    if config.attestation.provider == "software-only" and not env.dev_mode:
        problems.append(
            at.error(
                ("attestation", "provider"),
                "software-only claims are not hardware-attested and need "
                f"{ENV_DEV_MODE}=1 to be chosen deliberately",
                hint=f"set {ENV_DEV_MODE}=1 for a development gateway, or use a hardware provider",
            )
        )
    if env.bearer_token is not None and len(env.bearer_token.get_secret_value()) < MIN_TOKEN_LENGTH:
        problems.append(
            Problem(
                f"{ENV_BEARER_TOKEN} is shorter than {MIN_TOKEN_LENGTH} characters",
                hint=_TOKEN_HINT,
            )
        )
    if (
        env.operator_token is not None
        and len(env.operator_token.get_secret_value()) < MIN_TOKEN_LENGTH
    ):
        problems.append(
            Problem(
                f"{ENV_OPERATOR_TOKEN} is shorter than {MIN_TOKEN_LENGTH} characters",
                hint=_TOKEN_HINT,
            )
        )
    # A token shared by two holders is refused by credentials.check_token_reuse.
    for index, token in enumerate(auth.bearer_tokens):
        loc = ("auth", "bearer_tokens", index)
        if token.token_env is None:
            continue
        value = environ.get(token.token_env)
        if not value:
            problems.append(at.error(loc, f"token_env names {token.token_env}, which is not set"))
        elif len(value) < MIN_TOKEN_LENGTH:
            problems.append(
                at.error(
                    loc,
                    f"{token.token_env} holds fewer than {MIN_TOKEN_LENGTH} characters",
                    _TOKEN_HINT,
                )
            )
    if auth.operator_token_env is not None and not environ.get(auth.operator_token_env):
        problems.append(
            at.error(
                ("auth", "operator_token_env"), f"names {auth.operator_token_env}, which is not set"
            )
        )
    has_operator = auth.operator_token_sha256 or auth.operator_token_env or env.operator_token
    if not has_operator:
        problems.append(
            at.warning(
                ("auth",),
                "no operator token: escalated calls cannot be approved (each session's claim and "
                "audit chain stay readable by its own agent)",
                hint=f"set {ENV_OPERATOR_TOKEN} or auth.operator_token_sha256",
            )
        )
    if not listen.is_loopback and not config.tls.enabled:
        problems.append(
            at.warning(
                ("tls",),
                f"{listen} is not loopback and TLS is off: "
                "tokens and tool data would cross the network in clear",
                hint="set tls.cert_file and tls.key_file, or terminate TLS in front of the gateway",
            )
        )
    return problems


def check_tls(tls: TLSConfig, at: Locator) -> list[Problem]:
    problems: list[Problem] = []
    now = datetime.now(UTC)
    leaf: x509.Certificate | None = None
    if tls.cert_file is not None:
        certificates = _read_certificates(tls.cert_file, ("tls", "cert_file"), at, problems)
        if certificates:
            leaf = certificates[0]
            if leaf.not_valid_after_utc < now:
                problems.append(
                    at.error(
                        ("tls", "cert_file"),
                        f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
                    )
                )
            elif leaf.not_valid_before_utc > now:
                problems.append(
                    at.error(
                        ("tls", "cert_file"),
                        "certificate is not valid before "
                        f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                    )
                )
    if tls.key_file is not None:
        key_data = _read(tls.key_file, ("tls", "key_file"), at, problems)
        if key_data is not None:
            try:
                key = serialization.load_pem_private_key(key_data, password=None)
            except TypeError:
                problems.append(
                    at.error(
                        ("tls", "key_file"),
                        "the private key is encrypted; cMCP needs it unencrypted",
                    )
                )
            except ValueError:
                problems.append(
                    at.error(("tls", "key_file"), f"{tls.key_file} is not a PEM private key")
                )
            else:
                if leaf is not None and _spki(key.public_key()) != _spki(leaf.public_key()):
                    problems.append(
                        at.error(
                            ("tls", "key_file"),
                            "the private key does not belong to the certificate in cert_file",
                        )
                    )
    if tls.client_ca_file is not None:
        _read_certificates(tls.client_ca_file, ("tls", "client_ca_file"), at, problems)
    return problems


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(
    path: Path, loc: tuple[str | int, ...], at: Locator, problems: list[Problem]
) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(at.error(loc, f"cannot read {path}: {exc.strerror or exc}"))
        return None


def _read_certificates(
    path: Path, loc: tuple[str | int, ...], at: Locator, problems: list[Problem]
) -> list[x509.Certificate]:
    data = _read(path, loc, at, problems)
    if data is None:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append(at.error(loc, f"{path} holds no PEM certificate"))
        return []


def check_upstreams(
    config: CmcpConfig, environ: Mapping[str, str], catalog: Catalog | None, at: Locator
) -> list[Problem]:
    problems: list[Problem] = []
    base = at.document.base_dir
    for name, upstream in config.upstreams.items():
        loc: tuple[str | int, ...] = ("upstreams", name)
        if isinstance(upstream, HttpUpstream):
            for header, variable in upstream.headers_from_env.items():
                if not environ.get(variable):
                    problems.append(
                        at.error((*loc, "headers_from_env", header), f"{variable} is not set")
                    )
        elif isinstance(upstream, StdioUpstream):
            problems.extend(_check_stdio(upstream, base, loc, at))
        if catalog is not None and name not in catalog.servers:
            problems.append(at.warning(loc, "no catalog tool routes to this upstream"))
    if catalog is not None:
        problems.extend(
            at.error(
                ("upstreams",),
                f"catalog tool {tool.name!r} routes to upstream {tool.server!r}, "
                "which is not configured",
                hint=f"add upstreams.{tool.server}, or fix the tool's server in {catalog.path}",
            )
            for tool in catalog.tools.values()
            if tool.server not in config.upstreams
        )
    return problems


def _check_stdio(
    upstream: StdioUpstream, base: Path, loc: tuple[str | int, ...], at: Locator
) -> list[Problem]:
    executable = resolve_executable(upstream.command[0], base)
    if executable is None or not executable.is_file():
        return [at.error((*loc, "command"), f"{upstream.command[0]!r} is not an existing file")]
    if not os.access(executable, os.X_OK):
        return [at.error((*loc, "command"), f"{executable} is not executable")]
    if upstream.cwd is not None and not upstream.cwd.is_dir():
        return [at.error((*loc, "cwd"), f"{upstream.cwd} is not a directory")]
    if upstream.executable_sha256 is None:
        return [
            at.warning(
                loc,
                f"runs {executable} without a pinned executable_sha256",
                hint=f"pin it: executable_sha256: {file_sha256(executable)}",
            )
        ]
    actual = file_sha256(executable)
    if actual != upstream.executable_sha256:
        return [
            at.error(
                (*loc, "executable_sha256"),
                f"{executable} hashes to {actual}, not the pinned {upstream.executable_sha256}",
                hint="the executable changed since it was pinned; review it, then update the pin",
            )
        ]
    return []


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def check_state_paths(config: CmcpConfig, at: Locator) -> list[Problem]:
    """The audit store and claims directory must be creatable and writable."""
    problems: list[Problem] = []
    for loc, path, want_dir in (
        (("audit", "path"), config.audit.path, False),
        (("claims", "dir"), config.claims.dir, True),
    ):
        if path.exists() and path.is_dir() != want_dir:
            kind = "a directory" if want_dir else "a file"
            problems.append(at.error(loc, f"{path} exists and is not {kind}"))
            continue
        existing = path if path.exists() else next((p for p in path.parents if p.exists()), None)
        if existing is not None and not os.access(
            existing if existing.is_dir() else existing.parent, os.W_OK
        ):
            problems.append(at.error(loc, f"{existing} is not writable by this user"))
    return problems


def check_data_classes(config: CmcpConfig, catalog: Catalog, at: Locator) -> list[Problem]:
    known = config.policy.data_class_order
    return [
        at.error(
            ("policy", "data_class_order"),
            f"catalog tool {tool.name!r} has data_class {tool.data_class!r}, which is not in "
            f"the order ({' < '.join(known)})",
            hint="add it to policy.data_class_order or fix the catalog entry",
        )
        for tool in catalog.tools.values()
        if tool.data_class not in known
    ]


def check_pending(config: CmcpConfig, catalog: Catalog) -> list[Problem]:
    """Each tool pending review: the gateway serves without it, which is worth a warning
    (a reviewer has work to do), never an error. One whose upstream is not configured
    could not be served even once approved: the warning says so."""
    order = ", ".join(config.policy.data_class_order)
    return [
        Problem(
            f"tool {tool.name!r} (upstream {tool.server!r}) is pending review: the gateway "
            "does not list it and refuses calls to it"
            + (
                ""
                if tool.server in config.upstreams
                else f"; upstream {tool.server!r} is not configured either (no entry under "
                "upstreams)"
            ),
            file=str(catalog.path),
            hint=f"to approve it, set its data_class (one of {order}) and groups in "
            f"{catalog.path}; or remove the entry",
            severity=Severity.WARNING,
        )
        for tool in catalog.pending.values()
    ]


def check_catalog_pinning(config: CmcpConfig, at: Locator) -> list[Problem]:
    """`first_contact_data_class` belongs to first-contact pinning, and names a class of
    the order (its default too: a custom order may lack `internal`)."""
    known = config.policy.data_class_order
    if config.catalog_pinning == "explicit":
        if config.first_contact_data_class is None:
            return []
        return [
            at.error(
                ("first_contact_data_class",),
                "is set, but catalog_pinning is explicit: no tool is approved at first contact",
                hint="remove it, or set catalog_pinning: first-contact",
            )
        ]
    if config.pinned_data_class in known:
        return []
    stated = config.first_contact_data_class is not None
    return [
        at.error(
            ("first_contact_data_class",) if stated else ("catalog_pinning",),
            f"tools pinned at first contact would get data class {config.pinned_data_class!r}"
            f"{'' if stated else ' (the default)'}, which is not in the order "
            f"({' < '.join(known)})",
            hint="set first_contact_data_class to one of policy.data_class_order",
        )
    ]
