"""The TDX collector: a DCAP quote with the session binding as REPORTDATA, per session.

The quote comes one of two ways, chosen by `interface` ("auto": configfs-tsm where the
kernel serves it for tdx_guest, else the device):

- configfs-tsm (`/sys/kernel/config/tsm/report`, Linux 6.7+): make an entry directory,
  check its `provider` is `tdx_guest`, write the 64 bytes of REPORTDATA to `inblob`, read
  the quote from `outblob`, and check `generation` did not move while reading (another
  writer to the entry would make the quote not ours); then remove the entry. The kernel
  asks the host's quote generation service (QGS), which attaches the PCK certificate chain.
- `/dev/tdx_guest`, as Intel's libtdx_attest does without configfs-tsm: the TDREPORT for
  the REPORTDATA from the TDX_CMD_GET_REPORT0 ioctl (`cmcp_tdx.guest_device`), sent to the
  QGS over vsock or a Unix socket (`cmcp_tdx.qgs`), which returns the quote.

A TDREPORT is MACed for the local CPU and verifiable nowhere else, so it never becomes
evidence: whichever way, the result must parse as a quote v4 or v5 whose REPORTDATA is the
data written. The CCEL event log is added when readable, so a verifier can replay the
RTMRs. Detection is honest: present only when configfs-tsm is served by tdx_guest or the
device exists, as `interface` allows; `prepare` proves the device path end to end.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

from cmcp_cli.attestation.api import Collector, Detection, Evidence, GatewayFacts, ProviderError
from cmcp_tdx import qgs
from cmcp_tdx import quote as tdx
from cmcp_tdx.guest_device import Ioctl, get_tdreport, kernel_ioctl
from cmcp_tdx.measurement import measurement_string
from cmcp_tdx.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_tdx.settings import SECTION, TdxSettings

PROVIDER: Final = "tdx_guest"
ATTEMPTS: Final = 3
MAX_OUTBLOB: Final = 1 << 16
MAX_CCEL: Final = 1 << 24
_CONFIGFS_HINT: Final = (
    "configfs-tsm needs Linux 6.7+ with CONFIG_TSM_REPORTS and configfs mounted at "
    "/sys/kernel/config"
)
Route = Literal["configfs", "device"]


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


def trimmed_quote(blob: bytes, report_data: bytes, source: str) -> bytes:
    """The quote without any bytes after its declared end, checked to carry our data."""
    if len(blob) > MAX_OUTBLOB:
        raise ProviderError(f"the quote from {source} is larger than {MAX_OUTBLOB} bytes")
    try:
        parsed = tdx.parse_quote(blob)
    except tdx.QuoteFormatError as error:
        raise ProviderError(
            f"{source} returned something that is not a usable TDX quote: {error}",
            hint="the host's quote generation service must return quotes with the PCK chain "
            "(certification data type 6 holding type 5)",
        ) from None
    if parsed.body.report_data != report_data:
        raise ProviderError(
            f"the REPORTDATA of the quote from {source} is not the data the collector wrote"
        )
    return blob[: len(blob) - parsed.trailing]


class TdxCollector(Collector):
    """The Collector of the tdx provider (see the module docstring). `mkdir`/`rmdir` and
    `ioctl` are the kernel's unless a test injects stand-ins."""

    def __init__(
        self,
        mkdir: Callable[[Path], None] = os.mkdir,
        rmdir: Callable[[Path], None] = os.rmdir,
        ioctl: Ioctl = kernel_ioctl,
    ) -> None:
        self._mkdir, self._rmdir, self._ioctl = mkdir, rmdir, ioctl
        # one request at a time: configfs entries and the QGS exchange are not shared
        self._lock = threading.Lock()
        self._probed: dict[TdxSettings, Route] = {}  # the route "auto" found, by settings

    def _tsm(self, settings: TdxSettings) -> ConfigfsTsm:
        return ConfigfsTsm(settings.configfs_root, self._mkdir, self._rmdir)

    def _configfs(self, settings: TdxSettings) -> tuple[bool, str]:
        """Whether configfs-tsm is served by tdx_guest, and what was found."""
        root = settings.configfs_root
        if not root.is_dir():
            return False, f"configfs-tsm is not at {root}"
        try:
            provider = self._tsm(settings).provider()
        except OSError as error:
            return False, f"configfs-tsm at {root} is unreadable ({error.strerror or error})"
        if provider != PROVIDER:
            return False, f"configfs-tsm at {root} is served by {provider}, not TDX"
        return True, f"configfs-tsm at {root} is served by {PROVIDER}"

    def _route(self, settings: TdxSettings) -> Route:
        """The interface requests go to. "auto" probes configfs-tsm only when both it and
        the device exist; with one of them, that one is used (and its errors surface). A
        probe's answer is kept: which kernel interface serves the TD does not change while
        the gateway runs, so a session pays for one configfs entry, not two."""
        if settings.interface != "auto":
            return settings.interface
        if not settings.configfs_root.is_dir():
            return "device"
        if not settings.device.exists():
            return "configfs"
        if settings not in self._probed:
            self._probed[settings] = "configfs" if self._configfs(settings)[0] else "device"
        return self._probed[settings]

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            parsed = TdxSettings.parse(settings)
        except ProviderError as error:
            return Detection(False, error.message)
        root, device = parsed.configfs_root, parsed.device
        found = ""
        if parsed.interface != "device":
            served, found = self._configfs(parsed)
            if served:
                return Detection(True, found)
            if parsed.interface == "configfs":
                return Detection(False, f'{found}, and {SECTION}.interface is "configfs"')
        if device.exists():
            prefix = f"{found}; " if found else ""
            return Detection(
                True,
                f"{prefix}{device} exists: quotes come from its TDREPORT, made into a quote "
                f"by the QGS at {parsed.qgs}",
            )
        if parsed.interface == "device":
            return Detection(False, f"no TDX guest: {device} does not exist")
        if root.is_dir():
            return Detection(False, found)
        return Detection(False, f"no TDX guest: neither {root} nor {device} exists")

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        """Nothing is measured into the TD at start (its RTMRs stay as firmware left them).
        Refuses to start where quotes cannot be collected: through the device, one quote
        (for zero REPORTDATA) is collected, so a device, QGS or permission problem shows
        now rather than at the first session."""
        parsed = TdxSettings.parse(settings)
        if self._route(parsed) == "configfs":
            if not parsed.configfs_root.is_dir():
                raise self._no_configfs(parsed)
            return
        report_data = bytes(64)
        with self._lock:
            blob = self._device_quote(parsed, report_data)
        trimmed_quote(blob, report_data, f"the QGS at {parsed.qgs}")

    def _no_configfs(self, settings: TdxSettings) -> ProviderError:
        return ProviderError(
            f"configfs-tsm is not at {settings.configfs_root}, and {SECTION}.interface "
            'is "configfs"',
            hint=f'{_CONFIGFS_HINT}; or set {SECTION}.interface to "auto" to fall back to '
            f"{settings.device} and the host's QGS, or set {SECTION}.configfs_root",
        )

    def _device_quote(self, settings: TdxSettings, report_data: bytes) -> bytes:
        if settings.interface == "auto" and not settings.device.exists():
            raise ProviderError(
                f"no TDX guest: neither configfs-tsm at {settings.configfs_root} nor "
                f"{settings.device} exists",
                hint="run the gateway in a TDX trust domain (Linux 6.7+ for configfs-tsm, or "
                f"the tdx_guest driver and the host's QGS), or set {SECTION}.configfs_root "
                f"or {SECTION}.device",
            )
        tdreport = get_tdreport(settings.device, report_data, self._ioctl)
        return qgs.get_quote(settings.qgs, tdreport, settings.qgs_timeout)

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        parsed = TdxSettings.parse(settings)
        if len(binding) != 32:
            raise ProviderError(f"the session binding is {len(binding)} bytes, not 32")
        report_data = binding + bytes(32)
        with self._lock:
            route = self._route(parsed)
            if route == "configfs":
                blob, source = self._configfs_quote(parsed, report_data), "the kernel"
            else:
                blob = self._device_quote(parsed, report_data)
                source = f"the QGS at {parsed.qgs}"
        raw = trimmed_quote(blob, report_data, source)
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

    def _configfs_quote(self, settings: TdxSettings, report_data: bytes) -> bytes:
        if not settings.configfs_root.is_dir():
            raise self._no_configfs(settings)
        try:
            return self._tsm(settings).quote(report_data)
        except OSError as error:
            raise ProviderError(
                f"configfs-tsm at {settings.configfs_root} failed: {error}",
                hint="the gateway needs write access to the configfs-tsm report directory "
                "(root, or CAP_SYS_ADMIN) and a working quote generation service on the host",
            ) from None

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
