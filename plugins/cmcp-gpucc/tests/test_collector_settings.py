"""`attestation.providers.gpu-cc`: every setting validated, unknown ones refused, each
problem naming the setting by its full path and what to write instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cmcp_cli.attestation.api import ProviderError
from cmcp_gpucc.settings import GpuSettings

SECTION = "attestation.providers.gpu-cc"


def test_no_settings_attest_every_gpu_and_staple_nothing() -> None:
    given: dict[str, Any] | None
    for given in (None, {}):
        parsed = GpuSettings.parse(given)
        assert parsed == GpuSettings()
        assert parsed.devices is None and not parsed.staples_rims


def test_every_setting_parses_to_what_it_names() -> None:
    parsed = GpuSettings.parse(
        {
            "devices": [1, 0],
            "rims": ["/etc/cmcp/driver.xml", "/etc/cmcp/vbios.xml"],
            "ocsp": ["/etc/cmcp/ocsp-1.der"],
            "rim_url": "https://rim.attestation.nvidia.com/v1/rim/",
            "ocsp_url": "https://ocsp.ndis.nvidia.com/",
        }
    )
    assert parsed.devices == (1, 0)
    assert parsed.rims == (Path("/etc/cmcp/driver.xml"), Path("/etc/cmcp/vbios.xml"))
    assert parsed.ocsp == (Path("/etc/cmcp/ocsp-1.der"),)
    assert parsed.rim_url == "https://rim.attestation.nvidia.com/v1/rim/"
    assert parsed.ocsp_url == "https://ocsp.ndis.nvidia.com/"
    assert parsed.staples_rims
    assert GpuSettings.parse({"rim_url": "https://rims.example/"}).staples_rims


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ([0], f"{SECTION} must be a mapping of settings"),
        ({"device": [0]}, f"{SECTION}: unknown setting(s) device"),
        ({"devices": 0}, f"{SECTION}.devices must be a non-empty list of GPU indices"),
        ({"devices": []}, f"{SECTION}.devices must be a non-empty list of GPU indices"),
        ({"devices": [True]}, f"{SECTION}.devices: True is not a GPU index"),
        ({"devices": [-1]}, f"{SECTION}.devices: -1 is not a GPU index"),
        ({"devices": ["0"]}, f"{SECTION}.devices: '0' is not a GPU index"),
        ({"devices": [0, 0]}, f"{SECTION}.devices lists a GPU twice"),
        ({"rims": "/etc/rim.xml"}, f"{SECTION}.rims must be a list of absolute paths"),
        ({"rims": ["rim.xml"]}, f"{SECTION}.rims: 'rim.xml' is not an absolute path"),
        ({"ocsp": [7]}, f"{SECTION}.ocsp: 7 is not an absolute path"),
        (
            {"rim_url": "http://rim.example/"},
            f"{SECTION}.rim_url: 'http://rim.example/' is not an https URL",
        ),
        (
            {"ocsp_url": "file:///etc/ocsp"},
            f"{SECTION}.ocsp_url: 'file:///etc/ocsp' is not an https URL",
        ),
        ({"rim_url": "https:///v1/rim/"}, "is not an https URL"),
        ({"rim_url": 7}, f"{SECTION}.rim_url must be a URL string"),
        ({"rim_url": "https://user:pw@rim.example/"}, "carries credentials, a query or a fragment"),
        ({"ocsp_url": "https://ocsp.example/?x=1"}, "carries credentials, a query or a fragment"),
    ],
)
def test_a_wrong_setting_is_refused_with_its_path_and_a_hint(settings: Any, problem: str) -> None:
    with pytest.raises(ProviderError) as refused:
        GpuSettings.parse(settings)
    assert problem in refused.value.message
    assert refused.value.hint
