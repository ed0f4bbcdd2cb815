"""Collecting `sev-snp-report-v1` evidence inside an SEV-SNP guest.

configfs-tsm first (Documentation/ABI/testing/configfs-tsm): create an entry under
`/sys/kernel/config/tsm/report`, check its `provider` is `sev_guest`, optionally write
`privlevel`, write the 64-byte REPORT_DATA (binding || 32 zero bytes, DESIGN §6) to
`inblob`, read `outblob` (the report) and `auxblob` (the host's GHCB certificate table:
VCEK or VLEK, ASK, ARK), and check `generation` did not move between the write and the
reads (another writer would have changed the request); then remove the entry. Without
configfs-tsm, the /dev/sev-guest ioctls (`cmcp_sev.guest_ioctl`).

Detection is honest: present only when configfs-tsm's provider is sev_guest or
/dev/sev-guest exists. Every report is checked to carry the requested REPORT_DATA before
it becomes evidence.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_cli.attestation.api import Collector, Detection, Evidence, GatewayFacts, ProviderError
from cmcp_sev import roots
from cmcp_sev import structures as snp
from cmcp_sev.evidence import encode
from cmcp_sev.guest_ioctl import GuestIoctlError, get_report
from cmcp_sev.plugin import EVIDENCE_TYPE, PLATFORM
from cmcp_sev.settings import SECTION, SevSettings

PROVIDER: Final = "sev_guest"
ATTEMPTS: Final = 3  # a configfs request raced by another writer is retried this often
MAX_BLOB: Final = 1 << 20


class EntryOps(Protocol):
    """How a configfs-tsm report entry is created and removed: mkdir and rmdir on a real
    configfs (which creates and removes the attribute files itself)."""

    def create(self, path: Path) -> None: ...

    def remove(self, path: Path) -> None: ...


class _Configfs:
    def create(self, path: Path) -> None:
        path.mkdir()

    def remove(self, path: Path) -> None:
        path.rmdir()


class ConfigfsError(Exception):
    pass


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_BLOB + 1)
    if len(data) > MAX_BLOB:
        raise ConfigfsError(f"{path} holds more than {MAX_BLOB} bytes")
    return data


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)


class ConfigfsTsm:
    """One configfs-tsm report directory; `entries` creates and removes its entries."""

    def __init__(self, root: Path, entries: EntryOps | None = None) -> None:
        self.root = root
        self.entries = entries or _Configfs()

    def _entry(self) -> Path:
        path = self.root / f"cmcp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self.entries.create(path)
        except OSError as error:
            raise ConfigfsError(f"cannot create a report entry in {self.root}: {error}") from None
        return path

    def _remove(self, path: Path) -> None:
        try:
            self.entries.remove(path)
        except OSError as error:
            raise ConfigfsError(f"cannot remove the report entry {path}: {error}") from None

    def provider(self) -> str:
        entry = self._entry()
        try:
            return _read(entry / "provider").decode(errors="replace").strip()
        finally:
            self._remove(entry)

    def report(self, report_data: bytes, privlevel: int | None) -> tuple[bytes, bytes | None]:
        """The report for `report_data`, and the certificate table when the host gave one."""
        for _ in range(ATTEMPTS):
            entry = self._entry()
            try:
                provider = _read(entry / "provider").decode(errors="replace").strip()
                if provider != PROVIDER:
                    raise ConfigfsError(f"{self.root} is served by {provider!r}, not {PROVIDER}")
                if privlevel is not None:
                    _write(entry / "privlevel", str(privlevel).encode())
                _write(entry / "inblob", report_data)
                before = self._generation(entry)
                outblob = _read(entry / "outblob")
                auxblob = self._auxblob(entry)
                if self._generation(entry) == before:
                    return outblob, auxblob or None
            finally:
                self._remove(entry)
        raise ConfigfsError(
            f"another writer changed the report request {ATTEMPTS} times in a row; retry"
        )

    @staticmethod
    def _auxblob(entry: Path) -> bytes:
        """The certificate table; empty when the host supplies none (or the kernel predates
        auxblob), which leaves the VCEK to `vcek_file`."""
        try:
            return _read(entry / "auxblob")
        except FileNotFoundError:
            return b""
        except OSError as error:
            if error.errno in (errno.ENODATA, errno.ENOENT, errno.EINVAL):
                return b""
            raise

    def _generation(self, entry: Path) -> int:
        text = _read(entry / "generation").decode(errors="replace").strip()
        if not text.isdigit():
            raise ConfigfsError(f"{entry / 'generation'} holds {text!r}, not a number")
        return int(text)


class SevCollector(Collector):
    """The Collector of the sev-snp provider (see the module docstring). `entries` replaces
    configfs's mkdir/rmdir, for tests that run the flow in a plain directory."""

    def __init__(self, entries: EntryOps | None = None) -> None:
        self._entries = entries
        self._lock = threading.Lock()

    def detect(self, settings: Mapping[str, Any]) -> Detection:
        try:
            parsed = SevSettings.parse(settings)
        except ProviderError as error:
            return Detection(False, error.message)
        reasons = []
        if parsed.interface in ("auto", "configfs"):
            if parsed.configfs_root.is_dir():
                try:
                    provider = ConfigfsTsm(parsed.configfs_root, self._entries).provider()
                except (ConfigfsError, OSError) as error:
                    reasons.append(f"configfs-tsm at {parsed.configfs_root} is unusable: {error}")
                else:
                    if provider == PROVIDER:
                        return Detection(
                            True, f"configfs-tsm at {parsed.configfs_root} (sev_guest)"
                        )
                    reasons.append(f"configfs-tsm at {parsed.configfs_root} is {provider!r}")
            else:
                reasons.append(f"no configfs-tsm at {parsed.configfs_root}")
        if parsed.interface in ("auto", "ioctl"):
            if parsed.device.exists():
                return Detection(True, f"SEV-SNP guest device {parsed.device}")
            reasons.append(f"no {parsed.device}")
        return Detection(False, "not an SEV-SNP guest: " + "; ".join(reasons))

    def prepare(self, facts: GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        # Nothing is measured into the platform: the binding carries the policy hash.
        parsed = SevSettings.parse(settings)
        detection = self.detect(settings)
        if not detection.present:
            raise ProviderError(
                detection.detail,
                hint="run the gateway inside an SEV-SNP guest (kernel 6.7+ for configfs-tsm, "
                f"or the sev-guest module for /dev/sev-guest), or set {SECTION}.configfs_root",
            )
        if parsed.vcek_file is not None:
            self._vcek_file(parsed.vcek_file)

    def collect(self, binding: bytes, settings: Mapping[str, Any]) -> Evidence:
        parsed = SevSettings.parse(settings)
        if len(binding) != 32:
            raise ProviderError(f"the binding is {len(binding)} bytes, not 32")
        report_data = binding + bytes(32)
        with self._lock:
            raw, table = self._request(parsed, report_data)
        try:
            report = snp.parse_report(raw)
        except snp.ReportFormatError as error:
            raise ProviderError(f"the firmware returned an unusable report: {error}") from None
        if report.report_data != report_data:
            raise ProviderError("the firmware's report does not carry the requested REPORT_DATA")
        return Evidence(
            evidence_type=EVIDENCE_TYPE,
            evidence=self._evidence(report, table, parsed),
            platform=PLATFORM,
            measurement="sha384:" + report.measurement.hex(),
        )

    def _request(self, parsed: SevSettings, report_data: bytes) -> tuple[bytes, bytes | None]:
        use_configfs = parsed.interface == "configfs" or (
            parsed.interface == "auto" and parsed.configfs_root.is_dir()
        )
        if use_configfs:
            try:
                tsm = ConfigfsTsm(parsed.configfs_root, self._entries)
                return tsm.report(report_data, parsed.privlevel)
            except (ConfigfsError, OSError) as error:
                if parsed.interface == "configfs" or not parsed.device.exists():
                    raise ProviderError(f"configfs-tsm report failed: {error}") from None
        try:
            got = get_report(parsed.device, report_data, parsed.privlevel or 0)
        except GuestIoctlError as error:
            raise ProviderError(f"{parsed.device}: {error}") from None
        return got.report, got.cert_table

    def _evidence(
        self, report: snp.Report, table: bytes | None, parsed: SevSettings
    ) -> dict[str, Any]:
        try:
            found = snp.parse_cert_table(table) if table else {}
        except snp.ReportFormatError as error:
            raise ProviderError(f"the host's certificate table is malformed: {error}") from None
        signing_key = "vlek" if report.signing_key == snp.SigningKey.VLEK else "vcek"
        evidence: dict[str, Any] = {"report": encode(report.raw), "signing_key": signing_key}
        leaf = found.get(signing_key)
        if leaf is None and signing_key == "vcek" and parsed.vcek_file is not None:
            leaf = self._vcek_file(parsed.vcek_file)
        if leaf is not None:
            evidence[signing_key] = encode(leaf)
        chain = [found[name] for name in ("ask", "ark") if name in found]
        if chain:
            evidence["cert_chain"] = [encode(blob) for blob in chain]
        if report.cpuid_product is not None:
            evidence["product"] = report.cpuid_product.value
        return evidence

    @staticmethod
    def _vcek_file(path: Path) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ProviderError(f"{SECTION}.vcek_file {path}: {error.strerror}") from None
        try:
            cert = roots.load_pem(data)[0] if data.startswith(b"-----") else roots.load_der(data)
        except (ValueError, IndexError):
            raise ProviderError(
                f"{SECTION}.vcek_file {path} is not a DER or PEM certificate",
                hint="save the VCEK from AMD KDS (it serves DER) at that path",
            ) from None
        return cert.public_bytes(Encoding.DER)

    def close(self) -> None:
        """Nothing is held open between collections."""
