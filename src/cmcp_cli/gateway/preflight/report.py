"""Everything `cmcp start` needs, checked before it starts: the library behind
`cmcp validate-config`.

Problems are collected, never raised one at a time, so an operator fixes a config in one
pass. Only an unreadable config file is fatal (`UsageError`): there is nothing to check.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from cmcp_cli.attestation import software
from cmcp_cli.attestation.manager import ProviderRegistry, load_providers
from cmcp_cli.catalog.model import Catalog, load_catalog
from cmcp_cli.config import (
    KNOWN_ENV,
    CmcpConfig,
    Environment,
    read_environment,
    validate_data,
    validate_document,
)
from cmcp_cli.config_document import ENVIRONMENT, ConfigDocument, read_config_document
from cmcp_cli.config_environment import environment_document
from cmcp_cli.errors import CmcpError, ConfigError, Problem, Severity, UsageError
from cmcp_cli.gateway.enforcement.wiring import authorizer_for
from cmcp_cli.gateway.preflight import attestation, checks, credentials, devices
from cmcp_cli.gateway.preflight.anchoring import check_anchor
from cmcp_cli.gateway.preflight.appraisal import check_appraisal
from cmcp_cli.gateway.preflight.reload import check_reload
from cmcp_cli.gateway.preflight.source import (
    first_contact_note,
    ignored_start_variables,
    start_source,
)
from cmcp_cli.model_errors import document_location
from cmcp_cli.policy.bundle import read_bundle
from cmcp_cli.policy.engine import CompiledBundle, compile_bundle

_Loaded = TypeVar("_Loaded")


@dataclass(frozen=True)
class ConfigReport:
    config_path: Path | None  # the file; None for a config built from the environment
    problems: tuple[Problem, ...]
    base_dir: Path  # where the config's relative paths resolve
    config: CmcpConfig | None = None
    env: Environment | None = None
    bundle: CompiledBundle | None = None
    catalog: Catalog | None = None
    notes: tuple[str, ...] = ()  # what is worth knowing but needs no change

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def source(self) -> str:
        """The config as messages name it."""
        return str(self.config_path) if self.config_path is not None else "the environment"

    @property
    def check_hint(self) -> str:
        """How to see every problem of this config."""
        if self.config_path is None:
            return "run `cmcp validate-config` with the same environment"
        return f"run `cmcp validate-config --config {self.config_path}`"

    def to_json(self) -> dict[str, object]:
        config = self.config
        return {
            "config": str(self.config_path) if self.config_path is not None else ENVIRONMENT,
            "ok": self.ok,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
            "listen_addr": str(config.listen_addr) if config else None,
            "attestation_provider": config.attestation.provider if config else None,
            "gpu_required": config.attestation.gpu_required if config else None,
            "enforcement_mode": config.attestation.enforcement_mode if config else None,
            "dev_mode": self.env.dev_mode if self.env else None,
            "bundle_hash": self.bundle.hash if self.bundle else None,
            "policy_count": len(self.bundle.policies) if self.bundle else None,
            "catalog_pinning": config.catalog_pinning if config else None,
            "catalog_hash": self.catalog.hash if self.catalog else None,
            "tool_count": len(self.catalog.tools) if self.catalog else None,
            "pending_tool_count": len(self.catalog.pending) if self.catalog else None,
            "upstreams": sorted(config.upstreams) if config else None,
            "notes": list(self.notes),
        }


def check_start_config(
    config: Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    registry: ProviderRegistry | None = None,
) -> ConfigReport:
    """Check the config `cmcp start` serves (`source.start_document`): the file given,
    else cmcp-config.yaml in `cwd`, else the one the environment describes."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    source = start_source(config, environ, cwd)
    if source is not None:
        return check_config(source, environ, registry)
    try:
        document = environment_document(environ, cwd)
    except ConfigError as exc:
        return ConfigReport(config_path=None, problems=exc.problems, base_dir=cwd)
    return check_config(document, environ, registry)


def check_config(
    source: Path | ConfigDocument,
    environ: Mapping[str, str] | None = None,
    registry: ProviderRegistry | None = None,
    *,
    on_this_host: bool = True,
) -> ConfigReport:
    """Load the config (a file, or a document already read or built) and everything it
    references, and report every problem found.
    `registry`: the installed providers (by default, loaded when the config needs them).
    `on_this_host=False` leaves out whether its attestation provider can run here: for a
    config whose gateway runs elsewhere (`cmcp measure --config`)."""
    environ = os.environ if environ is None else environ
    if isinstance(source, ConfigDocument):
        document = source
    else:
        try:
            document = read_config_document(source)
        except ConfigError as exc:
            return ConfigReport(config_path=source, problems=exc.problems, base_dir=source.parent)
    path = document.path
    problems: list[Problem] = []
    notes: list[str] = []
    env, env_problems = read_environment(environ)
    problems.extend(env_problems)
    problems.extend(_unknown_env_warnings(env))
    if path is not None:
        problems.extend(ignored_start_variables(path, environ))
    config: CmcpConfig | None = None
    checkable: CmcpConfig | None = None
    try:
        config = checkable = validate_document(document, environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
        checkable = _without_invalid_keys(document, environ)

    bundle_path = config.policy_bundle_path if config else _raw_path(document, "policy_bundle_path")
    catalog_path = config.catalog_path if config else _raw_path(document, "catalog_path")
    bundle = _load_referenced(
        document, "policy_bundle_path", bundle_path, _compile_bundle_at, problems
    )
    pinning = checkable.catalog_pinning if checkable is not None else "explicit"
    if pinning == "first-contact" and catalog_path is not None and not catalog_path.exists():
        catalog = None
        notes.append(first_contact_note(catalog_path))
    else:
        catalog = _load_referenced(document, "catalog_path", catalog_path, load_catalog, problems)
    if bundle is not None and catalog is not None:
        try:
            authorizer_for(bundle, catalog)
        except CmcpError as exc:
            problems.append(Problem(exc.message, file=str(catalog.path), hint=exc.hint))
    if checkable is not None:
        located = checks.Locator(document)
        problems.extend(checks.check_auth(checkable, env, environ, located))
        sources = credentials.token_sources(checkable, env, environ)
        problems.extend(credentials.check_token_reuse(sources, located))
        problems.extend(credentials.check_operator_sources(sources, located))
        problems.extend(checks.check_hosts(checkable, located))
        problems.extend(checks.check_tls(checkable.tls, located))
        problems.extend(check_anchor(checkable, located))
        problems.extend(checks.check_upstreams(checkable, environ, catalog, located))
        problems.extend(checks.check_state_paths(checkable, located))
        problems.extend(checks.check_catalog_pinning(checkable, located))
        problems.extend(check_reload(checkable, bundle, located))
        if catalog is not None:
            problems.extend(checks.check_data_classes(checkable, catalog, located))
            problems.extend(checks.check_pending(checkable, catalog))
        if on_this_host:
            registry = registry or load_providers()
            problems.extend(check_appraisal(checkable, registry, located))
            if checkable.attestation.provider != software.NAME:
                found, noted = attestation.check_attestation(checkable, registry, located)
                problems.extend(found)
                notes.extend(noted)
            noted, refusal = devices.survey_devices(checkable, registry)
            notes.extend(noted)
            if refusal is not None:
                problems.append(
                    located.error(
                        devices.GPU_REQUIRED,
                        f"true, but no device can be attested here: {refusal}",
                        hint=devices.INSTALL_HINT,
                    )
                )
    return ConfigReport(
        config_path=path,
        problems=tuple(problems),
        base_dir=document.base_dir,
        notes=tuple(notes),
        config=config,
        env=env,
        bundle=bundle,
        catalog=catalog,
    )


_REPAIR_ROUNDS = 4


def _without_invalid_keys(
    document: ConfigDocument, environ: Mapping[str, str]
) -> CmcpConfig | None:
    """The config with every invalid setting removed, so that the remaining settings still
    get their semantic checks in the same run. Used for checking only, never for serving.
    """
    data = copy.deepcopy(document.data)
    for _ in range(_REPAIR_ROUNDS):
        try:
            return validate_data(data, document.base_dir, environ)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = document_location(CmcpConfig, tuple(error["loc"]))
                # a missing key cannot be removed: remove the object that lacks it
                _remove(data, loc[:-1] if error["type"] == "missing" else loc)
    return None


def _remove(data: Any, loc: tuple[str | int, ...]) -> None:
    if not loc:
        return
    parent = data
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(parent, dict):
        parent.pop(loc[-1], None)
    elif isinstance(parent, list) and isinstance(loc[-1], int) and loc[-1] < len(parent):
        del parent[loc[-1]]


def _raw_path(document: ConfigDocument, key: str) -> Path | None:
    value = document.data.get(key)
    if not isinstance(value, str) or not value:
        return None
    return document.base_dir / Path(value).expanduser()


def _load_referenced(
    document: ConfigDocument,
    key: str,
    path: Path | None,
    loader: Callable[[Path], _Loaded],
    problems: list[Problem],
) -> _Loaded | None:
    """Load what config `key` names; its problems join the report instead of raising."""
    if path is None:
        return None
    try:
        return loader(path)
    except UsageError as exc:  # nothing usable there: point at the key that names it
        problems.append(_at_key(document, key, exc))
    except CmcpError as exc:  # the file itself is wrong: its own problems carry locations
        problems.extend(exc.problems or (_at_key(document, key, exc),))
    return None


def _compile_bundle_at(path: Path) -> CompiledBundle:
    return compile_bundle(read_bundle(path))


def _at_key(document: ConfigDocument, key: str, exc: CmcpError) -> Problem:
    return Problem(
        f"{key}: {exc.message}",
        file=document.where((key,)),
        line=document.line_of((key,)),
        hint=exc.hint,
    )


def _unknown_env_warnings(env: Environment) -> list[Problem]:
    warnings = []
    for name in env.unknown:
        close = difflib.get_close_matches(name, KNOWN_ENV, n=1)
        warnings.append(
            Problem(
                f"environment variable {name} is not read by cMCP",
                hint=f"did you mean {close[0]}?" if close else f"cMCP reads {', '.join(KNOWN_ENV)}",
                severity=Severity.WARNING,
            )
        )
    return warnings
