"""`trace.appraisal`, read: the files the gateway's own appraisal trusts, read once at start.

`cmcp validate-config` and `cmcp start` read them the same way (`read_appraisal`), so a
config whose roots cannot be read, or whose platform policy does not fit the installed
providers, is refused before anything is served, naming the setting and the fix. Each
setting does what its name says or is refused: the evidence of a software-only provider
(the software one, or OPAQUE's token, a third party's appraisal) is never appraised, so
there any input is an error rather than a setting silently ignored. The values of a
platform-policy table are the provider's verifier's to judge: `cmcp start` has it judge
them on the first evidence (`gateway.runtime.check_measurement`); validate-config, which
collects no evidence, judges only its tables and keys.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.manager import ProviderRegistry
from cmcp_cli.attestation.platform_policy import check_platform_policy, read_platform_policy
from cmcp_cli.attestation.toolkit import trust_root_certificates
from cmcp_cli.claim.canonical import CanonicalizationError, canonical_bytes
from cmcp_cli.config_trace import AppraisalConfig
from cmcp_cli.errors import CmcpError
from cmcp_cli.evidence.appraising import AppraisalInputs, unappraised_reason

MAX_FILE_BYTES: Final = 1 << 20
SECTION: Final = ("trace", "appraisal")
_T = TypeVar("_T")


class AppraisalSettingError(CmcpError):
    """A `trace.appraisal` setting is unusable: `key` names it under the section."""

    def __init__(
        self, key: tuple[str | int, ...], message: str, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.key = key


def read_appraisal(config: AppraisalConfig, registry: ProviderRegistry) -> AppraisalInputs:
    """The inputs of the gateway's appraisal; `AppraisalSettingError` for the first setting
    that cannot be used (unreadable or not PEM certificates, a platform policy that is not
    TOML tables of installed providers' keys or has no canonical JSON form)."""
    roots = tuple(
        _read(("trust_roots", index), path, "trust root")
        for index, path in enumerate(config.trust_roots)
    )
    for index, pem in enumerate(roots):
        _guard(("trust_roots", index), partial(trust_root_certificates, (pem,)))
    collateral = tuple(
        _read(("collateral", index), path, "collateral")
        for index, path in enumerate(config.collateral)
    )
    policy: dict[str, dict[str, object]] = {}
    policy_dir: Path | None = None
    source = config.platform_policy
    if source is not None:
        where = ("platform_policy",)
        policy = _guard(where, lambda: read_platform_policy(source))
        _guard(where, lambda: check_platform_policy(policy, registry))
        try:
            canonical_bytes(policy)
        except CanonicalizationError as exc:
            raise AppraisalSettingError(
                where,
                f"the platform policy has no canonical JSON form, so no policy_ref names it "
                f"({exc})",
                hint="write its values as strings, integers, booleans, lists and tables",
            ) from None
        policy_dir = source.absolute().parent
    return AppraisalInputs(
        trust_roots=roots,
        collateral=collateral,
        platform_policy=policy,
        platform_policy_dir=policy_dir,
        allow_debug=config.allow_debug,
        required_status=config.required_status,
        sources={
            "trust_roots": [str(path) for path in config.trust_roots],
            "collateral": [str(path) for path in config.collateral],
            "platform_policy": None if source is None else str(source),
            "allow_debug": config.allow_debug,
        },
    )


def unappraised_problem(
    config: AppraisalConfig, spec: ProviderSpec
) -> AppraisalSettingError | None:
    """Why `config` cannot serve a gateway whose provider's evidence it never appraises
    (`unappraised_reason`): an input would be ignored; and a required status is never met
    by software-only evidence, which states no appraisal at all (a third party's token
    states its issuer's, which `required_status` judges)."""
    reason = unappraised_reason(spec)
    if reason is None:
        return None
    if config.required_status != "any" and spec.name == software.NAME:
        return AppraisalSettingError(
            ("required_status",),
            f"is {config.required_status}, but {reason} (its appraisal is none), so no "
            "session could open",
            hint="set required_status: any for a development gateway, or use a hardware provider",
        )
    given = [
        name
        for name, value in (
            ("trust_roots", config.trust_roots),
            ("collateral", config.collateral),
            ("platform_policy", config.platform_policy),
            ("allow_debug", config.allow_debug),
        )
        if value
    ]
    if given:
        return AppraisalSettingError(
            (given[0],),
            f"is set, but {reason}, so it would do nothing",
            hint=f"remove trace.appraisal.{', '.join(given)} or use a hardware provider",
        )
    return None


def _read(key: tuple[str | int, ...], path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise AppraisalSettingError(
            key,
            f"cannot read the {what} {path}: {error.strerror or error}",
            hint="give a readable file (a relative path is taken from the config's folder)",
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise AppraisalSettingError(key, f"the {what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _guard(key: tuple[str | int, ...], step: Callable[[], _T]) -> _T:
    """`step`'s result; its refusal (`CmcpError`, or `ValueError` from a PEM parser) as an
    `AppraisalSettingError` on `key`."""
    try:
        return step()
    except CmcpError as exc:
        raise AppraisalSettingError(key, exc.message, hint=exc.hint) from None
    except ValueError as exc:
        raise AppraisalSettingError(
            key, str(exc), hint="give PEM certificates (-----BEGIN CERTIFICATE-----)"
        ) from None
