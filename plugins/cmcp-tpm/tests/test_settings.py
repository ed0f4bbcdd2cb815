"""The TPM provider's settings: each bad value names its setting and the fix, unknown
names are refused (no TPM needed: the settings are checked before any is opened)."""

from __future__ import annotations

from typing import Any

import pytest

from cmcp_cli.attestation.api import ProviderError
from cmcp_tpm.settings import TpmSettings


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"tcti": ""}, "tcti"),
        ({"pcr": 7}, "pcr"),
        ({"pcr": "23"}, "pcr"),
        ({"pcrs": [0, 1]}, "pcrs"),
        ({"pcrs": [23, 23]}, "pcrs"),
        ({"pcrs": [0, 24, 23]}, "pcrs"),
        ({"ak_handle": "0x01C101D0"}, "ak_handle"),
        ({"ak_handle": "81010002"}, "ak_handle"),
        ({"ak_handle": True}, "ak_handle"),
        ({"ak_algorithm": "ECC"}, "ak_algorithm"),
        ({"ak_cert_nv_index": 0x81010002}, "ak_cert_nv_index"),
        ({"ek_cert_nv_indices": "0x01C00002"}, "ek_cert_nv_indices"),
        ({"ek_cert_nv_indices": ["0x01C00002", 0x01C00002]}, "ek_cert_nv_indices"),
    ],
)
def test_bad_settings_name_the_setting_and_the_fix(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ProviderError) as raised:
        TpmSettings.parse(settings)
    assert f"attestation.providers.tpm.{key}" in raised.value.message
    assert raised.value.hint


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ProviderError, match="unknown setting") as raised:
        TpmSettings.parse({"tcti": "device:/dev/tpmrm0", "ak_hndle": 1})
    assert "ak_hndle" in raised.value.message
    assert raised.value.hint is not None
    assert "ak_handle" in raised.value.hint
