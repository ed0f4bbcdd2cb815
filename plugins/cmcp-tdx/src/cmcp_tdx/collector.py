"""The TDX collector: a DCAP quote with the session binding as REPORTDATA, per session.

Quotes come from the Linux configfs-tsm interface (`/sys/kernel/config/tsm/report`,
Linux 6.7+): make an entry directory, check its `provider` is `tdx_guest`, write the 64
bytes of REPORTDATA to `inblob`, read the quote from `outblob`, and check `generation`
did not move while reading (another writer to the entry would make the quote not ours);
then remove the entry. The kernel's quote generation service (QGS, on the host) fetches
the PCK certificate chain, so the quote carries it.

`/dev/tdx_guest` alone yields only a TDREPORT (TDX_CMD_GET_REPORT0), which is MACed for
the local CPU and verifiable nowhere else; turning it into a quote needs the host's QGS
over the GetQuote path, which configfs-tsm drives. Without configfs-tsm the collector
refuses rather than emit a TDREPORT. The CCEL event log is added when readable, so a
verifier can replay the RTMRs.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from cmcp_cli.attestation.api import Detection, Evidence, GatewayFacts, ProviderError
from cmcp_tdx import quote as tdx
from cmcp_tdx.measurement import measurement_string
from cmcp_tdx.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_tdx.settings import SECTION, TdxSettings

PROVIDER: Final = "tdx_guest"
ATTEMPTS: Final = 3
MAX_OUTBLOB: Final = 1 << 16
MAX_CCEL: Final = 1 << 24
_CONFIGFS_HINT: Final = (
    "TDX quotes need the Linux configfs-tsm interface (kernel 6.7+, CONFIG_TSM_REPORTS, "
    "configfs mounted at /sys/kernel/config) and the host's quote generation service"
)


def _read_text(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


class ConfigfsTsm:
    """One configfs-tsm report directory. `mkdir`/`rmdir` are the kernel's (os.mkdir and
    os.rmdir create and remove an entry with its attribute files); tests inject a fake."""

    def __init__(
        self,
        root: Path,
        mkdir: Callable[[Path], None] = os.mkdir,
        rmdir: Callable[[Path], None] = os.rmdir,
    ) -> None:
        self.root, self.mkdir, self.rmdir = root, mkdir, rmdir

    def provider(self) -> str:
        """The TSM provider behind the directory, from a probe entry."""
        entry = self.root / f"cmcp-probe-{uuid.uuid4().hex}"
        self.mkdir(entry)
        try:
            return _read_text(entry / "provider")
        finally:
            self.rmdir(entry)

    def quote(self, report_data: bytes) -> bytes:
        entry = self.root / f"cmcp-{uuid.uuid4().hex}"
        self.mkdir(entry)
        try:
            provider = _read_text(entry / "provider")
            if provider != PROVIDER:
                raise ProviderError(
                    f"configfs-tsm at {self.root} is served by {provider!r}, not {PROVIDER!r}: "
                    "this is not a TDX guest",
                    hint="use the provider of this platform, or set attestation.provider",
                )
            for _ in range(ATTEMPTS):
                (entry / "inblob").write_bytes(report_data)
                before = _read_text(entry / "generation")
                with (entry / "outblob").open("rb") as stream:
                    blob = stream.read(MAX_OUTBLOB + 1)
                if _read_text(entry / "generation") == before:
                    return blob
            raise ProviderError(
                f"the configfs-tsm entry under {self.root} changed while the quote was read, "
                f"{ATTEMPTS} times: another process writes to it",
                hint="make sure nothing else uses the gateway's report entries",
            )
        finally:
            self.rmdir(entry)


def _trim(blob: bytes, report_data: bytes) -> bytes:
    """The quote without any bytes after its declared end, checked to carry our data."""
    if len(blob) > MAX_OUTBLOB:
        raise ProviderError(f"the quote is larger than {MAX_OUTBLOB} bytes")
    try:
        parsed = tdx.parse_quote(blob)
    except tdx.QuoteFormatError as error:
        raise ProviderError(
            f"the kernel returned something that is not a usable TDX quote: {error}",
            hint="the host's quote generation service must return quotes with the PCK chain "
            "(certification data type 6 holding type 5)",
        ) from None
    if parsed.body.report_data != report_data:
        raise ProviderError("the quote's REPORTDATA is not the data the collector wrote")
    return blob[: len(blob) - parsed.trailing]


class TdxCollector:
    """The Collector of the tdx provider (see the module docstring)."""

    def __init__(
        self,
        mkdir: Callable[[Path], None] = os.mkdir,
        rmdir: Callable[[Path], None] = os.rmdir,
    ) -> None:
        self._mkdir, self._rmdir = mkdir, rmdir
        self._lock = threading.Lock()

    def _tsm(self, settings: TdxSettings) -> ConfigfsTsm:
        return ConfigfsTsm(settings.configfs_root, self._mkdir, self._rmdir)

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            parsed = TdxSettings.parse(settings)
        except ProviderError as error:
            return Detection(False, error.message)
        root, device = parsed.configfs_root, parsed.device
        if root.is_dir():
            try:
                provider = self._tsm(parsed).provider()
            except OSError as error:
                provider = f"unreadable ({error.strerror or error})"
            if provider == PROVIDER:
                return Detection(True, f"configfs-tsm at {root} is served by {PROVIDER}")
            if not device.exists():
                return Detection(False, f"configfs-tsm at {root} is served by {provider}, not TDX")
        if device.exists():
            return Detection(
                True,
                f"{device} exists but configfs-tsm is not at {root}: quotes cannot be collected "
                f"({_CONFIGFS_HINT})",
            )
        return Detection(False, f"no TDX guest: neither {root} nor {device} exists")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        """Nothing is measured into the TD at start (its RTMRs stay as firmware left them);
        refuses to start where quotes cannot be collected."""
        parsed = TdxSettings.parse(settings)
        if not parsed.configfs_root.is_dir():
            raise self._no_configfs(parsed)

    def _no_configfs(self, settings: TdxSettings) -> ProviderError:
        found = f"{settings.device} exists, but " if settings.device.exists() else ""
        return ProviderError(
            f"{found}configfs-tsm is not at {settings.configfs_root}: the collector will not "
            "return a bare TDREPORT, which no one off this machine can verify",
            hint=f"{_CONFIGFS_HINT}; or set {SECTION}.configfs_root",
        )

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        parsed = TdxSettings.parse(settings)
        if len(binding) != 32:
            raise ProviderError(f"the session binding is {len(binding)} bytes, not 32")
        if not parsed.configfs_root.is_dir():
            raise self._no_configfs(parsed)
        report_data = binding + bytes(32)
        try:
            with self._lock:
                blob = self._tsm(parsed).quote(report_data)
        except OSError as error:
            raise ProviderError(
                f"configfs-tsm at {parsed.configfs_root} failed: {error}",
                hint="the gateway needs write access to the configfs-tsm report directory "
                "(root, or CAP_SYS_ADMIN) and a working quote generation service on the host",
            ) from None
        raw = _trim(blob, report_data)
        parsed_quote = tdx.parse_quote(raw)
        evidence: dict[str, Any] = {"quote": base64.b64encode(raw).decode()}
        log = self._ccel(parsed)
        if log is not None:
            evidence["ccel"] = base64.b64encode(log).decode()
        return Evidence(
            evidence_type=EVIDENCE_TYPE,
            evidence=evidence,
            platform=PLATFORM,
            measurement=measurement_string(parsed_quote.body.mrtd, parsed_quote.body.rtmrs),
        )

    @staticmethod
    def _ccel(settings: TdxSettings) -> bytes | None:
        if not settings.include_ccel:
            return None
        try:
            with settings.ccel_path.open("rb") as stream:
                data = stream.read(MAX_CCEL + 1)
        except OSError:
            return None  # no CCEL table (or not readable): the RTMRs are then not replayed
        return data if 0 < len(data) <= MAX_CCEL else None

    def close(self) -> None:
        """Nothing is held open between sessions."""
