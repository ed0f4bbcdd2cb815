"""The runtime data of an HCL report: the JSON document whose SHA-256 the hardware report
carries, and so the only way the vTPM's keys and the VM's configuration are attested.

    {"keys": [{"kid": "HCLAkPub", "kty": "RSA", "key_ops": ["sign"], "e": ..., "n": ...},
              {"kid": "HCLEkPub", ...}],
     "vm-configuration": {"console-enabled": bool, "secure-boot": bool, "tpm-enabled": bool,
                          "vmUniqueId": str, ... (other members are kept, not judged)},
     "user-data": 128 hex digits: the 64 bytes last written to NV 0x01400002, else zero}

`HCLAkPub` is the vTPM's attestation key (RSA, at persistent handle 0x81000003): a quote it
signs is the vTPM's, and the vTPM is the paravisor's. Parsing is strict where a lenient
reading would let two readers see different keys: duplicate JSON members, two keys with
one `kid`, a key that is not RSA of at least 2048 bits, and a `user-data` that is not
exactly 64 bytes of hex are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from cmcp_azure.hcl import USER_DATA_SIZE  # the paravisor copies NV 0x01400002 whole
from cmcp_cli.claim.keys import b64url_decode, b64url_encode
from cmcp_cli.strict_json import StrictJSONError, loads_strict

AK_KID: Final = "HCLAkPub"
EK_KID: Final = "HCLEkPub"
MIN_RSA_BITS: Final = 2048
_USER_DATA: Final = re.compile(f"[0-9a-fA-F]{{{2 * USER_DATA_SIZE}}}")
MAX_SIZE: Final = 8192


class RuntimeDataError(ValueError):
    """The runtime data is not the JSON document described above."""


@dataclass(frozen=True, slots=True)
class VmConfiguration:
    """The `vm-configuration` member; None where the paravisor did not say."""

    secure_boot: bool | None
    tpm_enabled: bool | None
    console_enabled: bool | None
    vm_unique_id: str | None
    members: Mapping[str, Any]  # everything it holds, for reasons and `--json`


@dataclass(frozen=True, slots=True)
class RuntimeData:
    keys: Mapping[str, Mapping[str, Any]]  # kid -> JWK
    ak_public: rsa.RSAPublicKey  # HCLAkPub
    vm_configuration: VmConfiguration
    user_data: bytes  # 64 bytes


def _base64url_integer(jwk: Mapping[str, Any], member: str) -> int:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise RuntimeDataError(f"{jwk.get('kid')}: {member} is not unpadded base64url")
    try:
        raw = b64url_decode(value)
    except ValueError as error:
        raise RuntimeDataError(f"{jwk.get('kid')}: {member} is {error}") from None
    return int.from_bytes(raw, "big")


def rsa_public_key(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The RSA key of a JWK, refused unless it is RSA of at least 2048 bits."""
    if jwk.get("kty") != "RSA":
        raise RuntimeDataError(f"{jwk.get('kid')}: kty is {jwk.get('kty')!r}, not 'RSA'")
    n = _base64url_integer(jwk, "n")
    e = _base64url_integer(jwk, "e")
    if n.bit_length() < MIN_RSA_BITS:
        raise RuntimeDataError(
            f"{jwk.get('kid')}: an RSA key of {n.bit_length()} bits, fewer than {MIN_RSA_BITS}"
        )
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as error:
        raise RuntimeDataError(f"{jwk.get('kid')}: not a usable RSA key ({error})") from None


def jwk_of(key: rsa.RSAPublicKey, kid: str) -> dict[str, Any]:
    """The JWK the paravisor writes for `key`."""
    numbers = key.public_numbers()

    def encode(value: int) -> str:
        return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {
        "kid": kid,
        "key_ops": ["sign"],
        "kty": "RSA",
        "e": encode(numbers.e),
        "n": encode(numbers.n),
    }


def _flag(configuration: Mapping[str, Any], member: str) -> bool | None:
    value = configuration.get(member)
    if value is None or isinstance(value, bool):
        return value
    raise RuntimeDataError(f"vm-configuration {member} is {value!r}, not true or false")


def parse(data: bytes) -> RuntimeData:
    if len(data) > MAX_SIZE:
        raise RuntimeDataError(f"it is {len(data)} bytes, more than the {MAX_SIZE} accepted")
    try:
        document = loads_strict(data)
    except StrictJSONError as error:
        raise RuntimeDataError(f"it is not one unambiguous JSON document ({error})") from None
    if not isinstance(document, dict):
        raise RuntimeDataError("it is not a JSON object")
    keys = document.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise RuntimeDataError("keys is not a list of JWK objects")
    by_kid: dict[str, Mapping[str, Any]] = {}
    for jwk in keys:
        kid = jwk.get("kid")
        if not isinstance(kid, str):
            raise RuntimeDataError("a key has no string kid")
        if kid in by_kid:
            raise RuntimeDataError(f"two keys have kid {kid!r}")
        by_kid[kid] = jwk
    if AK_KID not in by_kid:
        raise RuntimeDataError(f"no key has kid {AK_KID!r} (the vTPM's attestation key)")
    ak_public = rsa_public_key(by_kid[AK_KID])
    configuration = document.get("vm-configuration")
    if not isinstance(configuration, dict):
        raise RuntimeDataError("vm-configuration is not a JSON object")
    unique_id = configuration.get("vmUniqueId")
    if unique_id is not None and not isinstance(unique_id, str):
        raise RuntimeDataError("vm-configuration vmUniqueId is not a string")
    user_data = document.get("user-data")
    # a full match, not bytes.fromhex alone: that skips whitespace, and fewer bytes would
    # decode from the same length of text
    if not isinstance(user_data, str) or not _USER_DATA.fullmatch(user_data):
        raise RuntimeDataError(f"user-data is not {USER_DATA_SIZE} bytes of hex")
    user_bytes = bytes.fromhex(user_data)
    return RuntimeData(
        keys=by_kid,
        ak_public=ak_public,
        vm_configuration=VmConfiguration(
            secure_boot=_flag(configuration, "secure-boot"),
            tpm_enabled=_flag(configuration, "tpm-enabled"),
            console_enabled=_flag(configuration, "console-enabled"),
            vm_unique_id=unique_id,
            members=configuration,
        ),
        user_data=user_bytes,
    )


def build(
    ak_public: rsa.RSAPublicKey,
    *,
    ek_public: rsa.RSAPublicKey | None = None,
    vm_configuration: Mapping[str, Any] | None = None,
    user_data: bytes = b"",
) -> bytes:
    """Runtime data as the paravisor writes it (compact JSON, user-data as uppercase hex
    zero-padded to 64 bytes): for test doubles of the paravisor."""
    if len(user_data) > USER_DATA_SIZE:
        raise ValueError(f"user data is at most {USER_DATA_SIZE} bytes")
    keys = [jwk_of(ak_public, AK_KID)]
    if ek_public is not None:
        keys.append(jwk_of(ek_public, EK_KID))
    configuration = (
        dict(vm_configuration)
        if vm_configuration is not None
        else {"console-enabled": False, "secure-boot": True, "tpm-enabled": True,
              "vmUniqueId": "00000000-0000-0000-0000-000000000000"}
    )  # fmt: skip
    document = {
        "keys": keys,
        "vm-configuration": configuration,
        "user-data": (user_data + bytes(USER_DATA_SIZE - len(user_data))).hex().upper(),
    }
    return json.dumps(document, separators=(",", ":")).encode()
