"""A double of an Azure CVM's vTPM behind the paravisor, for tests, never used by the
collector: a real process in front of a real software TPM (swtpm), speaking the TPM command
stream of the swtpm TCTI.

    python -m cmcp_azure.testing.paravisor --dir DIR --hardware snp|tdx
        [--vm-configuration JSON] [--no-user-data-index] [--ignore-user-data]

At start it manufactures a swtpm (`cmcp_tpm.testing.SoftwareTpm`) and provisions it as
Azure's paravisor does: an RSA-2048 restricted signing key (RSASSA/SHA-256) persisted at
0x81000003, NV index 0x01400002 for 64 bytes of user data (owner-written; left undefined
with `--no-user-data-index`, so that the guest defines it), and NV index 0x01400001 for the
HCL report (platform-written, owner-read, as large as swtpm's NV_INDEX_MAX allows). It then
listens on 127.0.0.1 on a port pair, as swtpm does: the data port, whose TPM command stream
it forwards to swtpm, and the next port, swtpm's control channel, forwarded as raw bytes.

When the guest sends TPM2_NV_Read of 0x01400001 from offset 0, the double first sends swtpm
its own commands on that same connection (password sessions): it reads 0x01400002, builds
a fresh HCL report (runtime data with the AK's public key as HCLAkPub, that user data and
the vm-configuration) whose hardware report is an SNP report signed by a test VCEK or a
TDREPORT (`cmcp_azure.testing.synthetic`), and writes it to 0x01400001; then it forwards
the read. With `--ignore-user-data` it carries no user data, as a paravisor without that
feature. SNP: the VCEK, its chain and the test ARK go to DIR (`vcek.pem`,
`cert_chain.pem`, `ark.pem`). Once listening it writes `DIR/paravisor.json` = {"port",
"tcti", "ak_handle", "hardware"}, and every report it writes to `DIR/reports.jsonl` (hex).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cmcp_azure import hcl, runtime_data
from cmcp_azure.testing import tpm_wire
from cmcp_azure.testing.synthetic import SnpAuthority, snp_hcl_report, tdx_hcl_report
from cmcp_cli.testing.service import RunningDouble, ServiceProcess, write_ready
from cmcp_tpm.collector import ak_template
from cmcp_tpm.testing import LOOPBACK, SoftwareTpm
from cmcp_tpm.tpm_access import ESAPI, ESYS_TR, nv_buffer_max, tss

AK_HANDLE: Final = 0x81000003
READY: Final = "paravisor.json"
HARDWARE: Final = ("snp", "tdx")
HCL_REPORT_SIZE: Final = 2600  # the size of the genuine sets' NV index
_PORT_ATTEMPTS: Final = 20
_CONTROL_SECONDS: Final = 30.0  # a control exchange is a few bytes each way


@dataclass(frozen=True)
class Provisioned:
    ak_public: rsa.RSAPublicKey
    report_size: int  # of NV index 0x01400001
    chunk: int  # NV_BUFFER_MAX


class Paravisor:
    """The provisioned swtpm and what the double makes of the guest's requests."""

    def __init__(
        self,
        folder: Path,
        hardware: str,
        vm_configuration: dict[str, Any] | None,
        *,
        ignore_user_data: bool,
    ) -> None:
        self.folder, self.hardware = folder, hardware
        self.vm_configuration = vm_configuration
        self.ignore_user_data = ignore_user_data
        self.authority = SnpAuthority.create() if hardware == "snp" else None
        self.lock = threading.Lock()
        self.provisioned: Provisioned | None = None

    def provision(self, tcti: str, *, user_data_index: bool) -> None:
        esapi = ESAPI(tcti)
        try:
            transient, public, _, _, _ = esapi.create_primary(
                None, ak_template("rsa"), ESYS_TR.ENDORSEMENT
            )
            esapi.evict_control(ESYS_TR.OWNER, transient, AK_HANDLE)
            esapi.flush_context(transient)
            key = serialization.load_der_public_key(bytes(public.publicArea.to_der()))
            if not isinstance(key, rsa.RSAPublicKey):
                raise TypeError("the AK template made a key that is not RSA")
            if user_data_index:
                _define(esapi, hcl.USER_DATA_NV_INDEX, hcl.USER_DATA_SIZE, platform=False)
            _, data = esapi.get_capability(tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT_NV.INDEX_MAX, 1)
            size = min(HCL_REPORT_SIZE, int(data.data.tpmProperties[0].value))
            chunk = nv_buffer_max(esapi)
            self.provisioned = Provisioned(key, size, chunk)
            report = self.report(bytes(hcl.USER_DATA_SIZE))
            index = _define(esapi, hcl.NV_INDEX, size, platform=True)
            for offset in range(0, len(report), chunk):
                esapi.nv_write(index, report[offset : offset + chunk], offset, ESYS_TR.PLATFORM)
        finally:
            esapi.close()
        if self.authority is not None:
            self.authority.write(self.folder)

    def report(self, user_data: bytes) -> bytes:
        """A fresh HCL report over the AK, carrying `user_data`."""
        provisioned = self.provisioned
        if provisioned is None:
            raise RuntimeError("the paravisor is not provisioned")
        carried = bytes(hcl.USER_DATA_SIZE) if self.ignore_user_data else user_data
        runtime = runtime_data.build(
            provisioned.ak_public, vm_configuration=self.vm_configuration, user_data=carried
        )
        size = provisioned.report_size
        if self.authority is not None:
            report = snp_hcl_report(self.authority, runtime, size=size)
        else:
            report = tdx_hcl_report(runtime, size=size)
        with self.lock, (self.folder / "reports.jsonl").open("a") as log:
            log.write(json.dumps({"hcl_report": report.hex()}) + "\n")
        return report

    def refresh(self, stream: socket.socket) -> None:
        """On the guest's swtpm connection: read the user data, write a fresh report."""
        provisioned = self.provisioned
        if provisioned is None:
            raise RuntimeError("the paravisor is not provisioned")
        user_data = _user_data(stream)
        report = self.report(user_data)
        tpm_wire.nv_write(stream, tpm_wire.RH_PLATFORM, hcl.NV_INDEX, report, provisioned.chunk)


def _define(esapi: ESAPI, index: int, size: int, *, platform: bool) -> ESYS_TR:
    if platform:  # the paravisor's own: the guest reads it as the owner and cannot change it
        attributes = tss.TPMA_NV.PPWRITE | tss.TPMA_NV.OWNERREAD | tss.TPMA_NV.PLATFORMCREATE
    else:  # the guest's request to the paravisor
        attributes = tss.TPMA_NV.OWNERWRITE | tss.TPMA_NV.OWNERREAD
    public = tss.TPM2B_NV_PUBLIC(
        nvPublic=tss.TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=tss.TPM2_ALG.SHA256, attributes=attributes, dataSize=size
        )
    )
    return esapi.nv_define_space(None, public, ESYS_TR.PLATFORM if platform else ESYS_TR.OWNER)


def _user_data(stream: socket.socket) -> bytes:
    """The 64 bytes the next report carries: what the guest wrote to 0x01400002, zero-padded;
    zeros where it defined no such index or never wrote it."""
    public = tpm_wire.nv_read_public(stream, hcl.USER_DATA_NV_INDEX)
    if public is None:
        return bytes(hcl.USER_DATA_SIZE)
    if public.attributes & int(tss.TPMA_NV.OWNERREAD):
        auth = tpm_wire.RH_OWNER
    elif public.attributes & int(tss.TPMA_NV.AUTHREAD):
        auth = hcl.USER_DATA_NV_INDEX
    else:
        raise tpm_wire.WireError("the guest defined 0x01400002 readable by neither owner nor auth")
    size = min(public.size, hcl.USER_DATA_SIZE)
    data = tpm_wire.nv_read(stream, auth, hcl.USER_DATA_NV_INDEX, size) or b""
    return data + bytes(hcl.USER_DATA_SIZE - len(data))


class _Forwarder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False


def _serve(paravisor: Paravisor, swtpm_port: int) -> tuple[_Forwarder, _Forwarder]:
    """The data and control listeners on a port pair of 127.0.0.1."""

    class Data(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection((LOOPBACK, swtpm_port)) as upstream:
                try:
                    while (command := tpm_wire.read_message(self.request)) is not None:
                        if tpm_wire.reads_nv_start(command, hcl.NV_INDEX):
                            paravisor.refresh(upstream)
                        upstream.sendall(command)
                        response = tpm_wire.read_message(upstream)
                        if response is None:
                            return
                        self.request.sendall(response)
                except (tpm_wire.WireError, OSError) as error:
                    sys.stderr.write(f"paravisor: {error}\n")

    class Control(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection((LOOPBACK, swtpm_port + 1)) as upstream:
                pumps = [
                    threading.Thread(target=_pump, args=pair, daemon=True)
                    for pair in ((self.request, upstream), (upstream, self.request))
                ]
                for pump in pumps:
                    pump.start()
                for pump in pumps:
                    pump.join(_CONTROL_SECONDS)
                # A thread blocked in recv keeps a closed socket's connection open: shut
                # both down, so that swtpm (one control connection at a time) sees the end.
                for end in (upstream, self.request):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

    for _ in range(_PORT_ATTEMPTS):
        data = _Forwarder((LOOPBACK, 0), Data)
        port = int(data.server_address[1])
        try:
            control = _Forwarder((LOOPBACK, port + 1), Control)
        except OSError:
            data.server_close()
            continue
        return data, control
    raise RuntimeError(f"no free port pair on {LOOPBACK} in {_PORT_ATTEMPTS} attempts")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Forward bytes until `source` ends, then end `sink`'s direction as well."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(4096):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)


def _stop(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    raise SystemExit(0)  # unwinds through `with SoftwareTpm()`, which stops swtpm


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--hardware", choices=HARDWARE, required=True)
    parser.add_argument("--vm-configuration", type=json.loads)
    parser.add_argument("--no-user-data-index", action="store_true")
    parser.add_argument("--ignore-user-data", action="store_true")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    paravisor = Paravisor(
        arguments.dir,
        arguments.hardware,
        arguments.vm_configuration,
        ignore_user_data=arguments.ignore_user_data,
    )
    with SoftwareTpm() as tpm:
        paravisor.provision(tpm.tcti, user_data_index=not arguments.no_user_data_index)
        data, control = _serve(paravisor, tpm.port)
        threading.Thread(target=control.serve_forever, daemon=True).start()
        port = int(data.server_address[1])
        write_ready(
            arguments.dir,
            READY,
            {
                "port": port,
                "tcti": f"swtpm:host={LOOPBACK},port={port}",
                "ak_handle": AK_HANDLE,
                "hardware": arguments.hardware,
            },
        )
        try:
            data.serve_forever()
        finally:
            data.server_close()
            control.shutdown()
            control.server_close()


class RunningParavisor(RunningDouble):
    """The double as a test runs it: its process, and what it wrote into its folder."""

    @classmethod
    def start(
        cls,
        folder: Path,
        hardware: str,
        *,
        vm_configuration: dict[str, Any] | None = None,
        user_data_index: bool = True,
        ignore_user_data: bool = False,
    ) -> RunningParavisor:
        arguments = ["--dir", str(folder), "--hardware", hardware]
        if vm_configuration is not None:
            arguments += ["--vm-configuration", json.dumps(vm_configuration)]
        if not user_data_index:
            arguments.append("--no-user-data-index")
        if ignore_user_data:
            arguments.append("--ignore-user-data")
        module = "cmcp_azure.testing.paravisor"
        return cls(ServiceProcess.start(module, arguments, folder, ready=READY))

    @property
    def tcti(self) -> str:
        return str(self.service.facts["tcti"])

    def reports(self) -> list[bytes]:
        """Every HCL report the double wrote, oldest first."""
        log = self.folder / "reports.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [bytes.fromhex(json.loads(line)["hcl_report"]) for line in lines]

    def snp_settings(self, **extra: Any) -> dict[str, Any]:
        """An SNP collector's settings for this vTPM and the VCEK and chain files the SNP
        double wrote (no IMDS needed), with `extra` on top."""
        return {
            "tcti": self.tcti,
            "vcek": str(self.folder / "vcek.pem"),
            "cert_chain": str(self.folder / "cert_chain.pem"),
            **extra,
        }


if __name__ == "__main__":
    main()
