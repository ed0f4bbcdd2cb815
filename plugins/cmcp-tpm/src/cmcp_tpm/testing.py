"""A real software TPM for tests and benchmarks, and the enrollment a privacy CA performs.

`SoftwareTpm` manufactures a fresh swtpm (EK, EK certificate and platform certificate
issued by a local CA that lives in the same temporary directory, never the system's
`/var/lib/swtpm-localca`), serves it on loopback TCP ports and removes every trace on exit.

`enroll_attestation_key` does what a privacy CA does before it certifies an AK: it proves
that the AK lives in the same TPM as the EK (MakeCredential to the EK for the AK's Name,
ActivateCredential inside the TPM), then issues an X.509 AK certificate and stores it at
the AK certificate NV index, where the collector looks for it.

A machine without tpm2-pytss (libtss2) can still import this module: the verifier's tests
share its fixtures.
"""

from __future__ import annotations

import hmac
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from cmcp_cli.attestation.toolkit import key_usage
from cmcp_tpm.settings import AK_CERT_NV_INDEX, NV_INDEX_FIRST, RSA_EK_CERT_NV_INDEX
from cmcp_tpm.tpm_access import defined_handles, der_certificate, nv_buffer_max, read_nv

try:
    import tpm2_pytss as tss  # type: ignore[import-untyped]  # ships no type information
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT
    from tpm2_pytss.internal.templates import ek_rsa2048  # type: ignore[import-untyped]
except ImportError:  # no libtss2 here: SoftwareTpm and TestCa work without it
    tss = None

LOOPBACK = "127.0.0.1"
# The swtpm TCTI talks to the control channel on the port after the server's.
_CTRL_PORT_OFFSET = 1
_START_ATTEMPTS = 5
_READY_TIMEOUT_SECONDS = 10.0
_SETUP_TIMEOUT_SECONDS = 120.0
# TPM2_GetRandom(8) with no sessions: answered only once the TPM has started up.
_GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")
TCG_KP_AIK_CERTIFICATE = ObjectIdentifier("2.23.133.8.3")
# swtpm_setup exits before the swtpm it spawned does; run it under a child subreaper that
# waits for every descendant, so no orphan is left for an init that may never reap it.
_REAP_DESCENDANTS = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
code = subprocess.call(sys.argv[1:])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
sys.exit(code)
"""


class SoftwareTpmError(RuntimeError):
    """swtpm could not be manufactured or started; the message carries its log."""


def _require_tss() -> None:
    if tss is None:
        raise RuntimeError("tpm2-pytss is not installed: pip install 'cmcp-tpm[collector]'")


def _free_port_pair() -> int:
    """A loopback port P with P + 1 also free (a race with other processes stays possible:
    `SoftwareTpm` retries when swtpm cannot bind)."""
    while True:
        with socket.socket() as first:
            first.bind((LOOPBACK, 0))
            port = int(first.getsockname()[1])
            if port + _CTRL_PORT_OFFSET > 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((LOOPBACK, port + _CTRL_PORT_OFFSET))
                except OSError:
                    continue
            return port


class SoftwareTpm:
    """`with SoftwareTpm() as tpm:` a manufactured swtpm at `tpm.tcti` until the block ends."""

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ek_ca_pem = b""

    @property
    def tcti(self) -> str:
        return f"swtpm:host={LOOPBACK},port={self.port}"

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise SoftwareTpmError("the software TPM is not running")
        return self._directory

    def __enter__(self) -> SoftwareTpm:
        self._directory = Path(tempfile.mkdtemp(prefix="cmcp-swtpm-"))
        try:
            self._manufacture()
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop swtpm (terminate, then kill) and delete its state and CA."""
        process, self._process = self._process, None
        if process is not None:
            _stop(process)
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _manufacture(self) -> None:
        root = self.directory
        ca_dir, state_dir = root / "localca", root / "state"
        ca_dir.mkdir()
        state_dir.mkdir()
        localca_conf = root / "swtpm-localca.conf"
        localca_conf.write_text(
            f"statedir = {ca_dir}\n"
            f"signingkey = {ca_dir / 'signkey.pem'}\n"
            f"issuercert = {ca_dir / 'issuercert.pem'}\n"
            f"certserial = {ca_dir / 'certserial'}\n"
        )
        localca_options = root / "swtpm-localca.options"
        localca_options.write_text(
            "--platform-manufacturer cMCP\n--platform-version 2.1\n--platform-model swtpm-test\n"
        )
        setup_conf = root / "swtpm_setup.conf"
        setup_conf.write_text(
            f"create_certs_tool = {_tool('swtpm_localca')}\n"
            f"create_certs_tool_config = {localca_conf}\n"
            f"create_certs_tool_options = {localca_options}\n"
            "active_pcr_banks = sha256\n"
        )
        log = root / "swtpm_setup.log"
        command = [
            _tool("swtpm_setup"),
            "--tpm2",
            "--tpm-state",
            str(state_dir),
            "--tpm",
            f"{_tool('swtpm')} socket",
            "--create-ek-cert",
            "--create-platform-cert",
            "--pcr-banks",
            "sha256",
            "--config",
            str(setup_conf),
            "--logfile",
            str(log),
        ]
        # The root CA key is created without a password; never inherit the user's.
        environment = {k: v for k, v in os.environ.items() if k != "SWTPM_ROOTCA_PASSWORD"}
        environment["XDG_CONFIG_HOME"] = str(root)
        try:
            result = subprocess.run(  # noqa: S603 - fixed argv, absolute paths
                [sys.executable, "-c", _REAP_DESCENDANTS, *command],
                capture_output=True,
                timeout=_SETUP_TIMEOUT_SECONDS,
                check=False,
                env=environment,
                cwd=root,
            )
        except subprocess.TimeoutExpired:
            raise SoftwareTpmError(f"swtpm_setup did not finish: {_tail(log)}") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise SoftwareTpmError(
                f"swtpm_setup failed ({result.returncode}): {output} {_tail(log)}"
            )
        issuer = (ca_dir / "issuercert.pem").read_bytes()
        root_cert = (ca_dir / "swtpm-localca-rootca-cert.pem").read_bytes()
        # The EK certificate is signed by the local CA's issuer, which the root signs;
        # pinning both lets a verifier chain the EK certificate without the NV holding more.
        self.ek_ca_pem = issuer + root_cert

    def _start(self) -> None:
        root = self.directory
        for _ in range(_START_ATTEMPTS):
            port = _free_port_pair()
            log = root / f"swtpm-{port}.log"
            command = [
                _tool("swtpm"),
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={root / 'state'}",
                "--server",
                f"type=tcp,port={port},bindaddr={LOOPBACK}",
                "--ctrl",
                f"type=tcp,port={port + _CTRL_PORT_OFFSET},bindaddr={LOOPBACK}",
                "--flags",
                "not-need-init,startup-clear",
                "--log",
                f"file={log}",
            ]
            errors = root / f"swtpm-{port}.stderr"
            with errors.open("wb") as stderr:
                process = subprocess.Popen(  # noqa: S603 - fixed argv, absolute paths
                    command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=root
                )
            self._process = process
            if _wait_ready(process, port):
                self.port = port
                return
            self._process = None
            _stop(process)
            output = _tail(log) + _tail(errors)
            if "Address already in use" not in output:
                raise SoftwareTpmError(f"swtpm did not start on port {port}: {output}")
        raise SoftwareTpmError(f"swtpm found no free port pair in {_START_ATTEMPTS} attempts")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SoftwareTpmError(f"{name} is not installed (Debian: apt-get install swtpm-tools)")
    return path


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return f"(no {log.name})"


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _wait_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once swtpm answers a TPM command; False if it exited or never answered."""
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0) as connection:
                connection.sendall(_GET_RANDOM)
                header = connection.recv(10)
            if len(header) == 10 and header[6:10] == bytes(4):
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


@dataclass(frozen=True)
class TestCa:
    """A self-signed ECDSA P-256 root that plays the privacy CA issuing AK certificates."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "cMCP test AK CA") -> TestCa:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(certificate_signing=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def root_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_ak_certificate(
        self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, common_name: str
    ) -> x509.Certificate:
        """An end-entity certificate for an AK, with the TCG AIK certificate purpose."""
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(certificate_signing=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([TCG_KP_AIK_CERTIFICATE]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def _key_usage(*, certificate_signing: bool) -> x509.KeyUsage:
    return key_usage(
        digital_signature=not certificate_signing,
        key_cert_sign=certificate_signing,
        crl_sign=certificate_signing,
    )


def enroll_attestation_key(
    tcti: str, ak_handle: int, ca: TestCa, *, nv_index: int = AK_CERT_NV_INDEX
) -> bytes:
    """Certify the AK persisted at `ak_handle` after proving it shares a TPM with the EK;
    store the DER certificate at `nv_index` (replacing what is there) and return it."""
    _require_tss()
    esapi = ESAPI(tcti)
    try:
        ak = esapi.tr_from_tpmpublic(ak_handle)
        ak_public, ak_name, _ = esapi.read_public(ak)
        secret = secrets.token_bytes(32)
        blob, encrypted_seed = _make_credential(esapi, bytes(ak_name), secret)
        recovered = _activate_credential(esapi, ak, blob, encrypted_seed)
        if not hmac.compare_digest(recovered, secret):
            raise RuntimeError("ActivateCredential recovered a different secret")
        public_key = serialization.load_der_public_key(bytes(ak_public.publicArea.to_der()))
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise TypeError(f"the AK is a {type(public_key).__name__}, not an RSA or EC key")
        certificate = ca.issue_ak_certificate(public_key, f"cMCP AK 0x{ak_handle:08X}")
        der = certificate.public_bytes(serialization.Encoding.DER)
        _store_nv(esapi, nv_index, der)
        return der
    finally:
        esapi.close()


def _make_credential(
    esapi: ESAPI, ak_name: bytes, secret: bytes
) -> tuple[TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET]:
    """The privacy CA's side: a credential that only the TPM holding this EK can open, and
    only for an object with this Name. The EK must be the one its NV certificate names."""
    ek, ek_public, _, _, _ = esapi.create_primary(None, ek_rsa2048.template, ESYS_TR.ENDORSEMENT)
    esapi.flush_context(ek)
    ek_der = bytes(ek_public.publicArea.to_der())
    where = f"NV index 0x{RSA_EK_CERT_NV_INDEX:08X}"
    stored = read_nv(esapi, RSA_EK_CERT_NV_INDEX, nv_buffer_max(esapi), where)
    if stored is None:
        raise RuntimeError("the TPM holds no RSA EK certificate (swtpm_setup --create-ek-cert)")
    certificate = x509.load_der_x509_certificate(der_certificate(stored, "the EK certificate"))
    certified = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if certified != ek_der:
        raise RuntimeError("the EK does not match the EK certificate in NV")
    # As a privacy CA would, use only the EK's public part, loaded into the NULL hierarchy.
    loaded = esapi.load_external(
        tss.TPM2B_PUBLIC(publicArea=ek_public.publicArea), None, ESYS_TR.NULL
    )
    try:
        blob, seed = esapi.make_credential(
            loaded, tss.TPM2B_DIGEST(secret), tss.TPM2B_NAME(ak_name)
        )
    finally:
        esapi.flush_context(loaded)
    return blob, seed


def _activate_credential(
    esapi: ESAPI, ak: ESYS_TR, blob: TPM2B_ID_OBJECT, seed: TPM2B_ENCRYPTED_SECRET
) -> bytes:
    """The TPM's side: the EK (authorized by its policy, PolicySecret(endorsement)) opens
    the credential, and the TPM releases it only because the AK's Name matches."""
    ek, _, _, _, _ = esapi.create_primary(None, ek_rsa2048.template, ESYS_TR.ENDORSEMENT)
    session = esapi.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        tss.TPM2_SE.POLICY,
        tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.NULL),
        tss.TPM2_ALG.SHA256,
    )
    try:
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        recovered = esapi.activate_credential(
            ak, ek, blob, seed, session1=ESYS_TR.PASSWORD, session2=session
        )
    finally:
        esapi.flush_context(session)
        esapi.flush_context(ek)
    return bytes(recovered)


def _store_nv(esapi: ESAPI, index: int, data: bytes) -> None:
    """Define `index` (owner-written, readable with its empty auth) to hold exactly `data`."""
    if index in defined_handles(esapi, NV_INDEX_FIRST):
        esapi.nv_undefine_space(esapi.tr_from_tpmpublic(index), ESYS_TR.OWNER)
    attributes = (
        tss.TPMA_NV.OWNERWRITE | tss.TPMA_NV.OWNERREAD | tss.TPMA_NV.AUTHREAD | tss.TPMA_NV.NO_DA
    )
    public = tss.TPM2B_NV_PUBLIC(
        nvPublic=tss.TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=tss.TPM2_ALG.SHA256, attributes=attributes, dataSize=len(data)
        )
    )
    handle = esapi.nv_define_space(None, public, ESYS_TR.OWNER)
    chunk = nv_buffer_max(esapi)
    for offset in range(0, len(data), chunk):
        esapi.nv_write(handle, data[offset : offset + chunk], offset, ESYS_TR.OWNER)
    esapi.tr_close(handle)


def read_pcrs(tcti: str, indices: tuple[int, ...]) -> dict[int, bytes]:
    """The sha256 bank's current values, read independently of the collector."""
    _require_tss()
    esapi = ESAPI(tcti)
    try:
        values: dict[int, bytes] = {}
        for index in indices:
            selection = tss.TPML_PCR_SELECTION.parse(f"sha256:{index}")
            _, _, digests = esapi.pcr_read(selection)
            values[index] = bytes(digests.digests[0])
        return values
    finally:
        esapi.close()
