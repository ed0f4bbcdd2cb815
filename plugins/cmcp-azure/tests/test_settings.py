"""The Azure providers' settings: the defaults are an Azure CVM's, each value is checked,
and every refusal names the setting by its full path and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cmcp_azure.settings import AzureSettings
from cmcp_cli.attestation.api import ProviderError

SNP = "azure-sev-snp"
TDX = "azure-tdx"


def refused(provider: str, settings: Any, *fragments: str) -> None:
    with pytest.raises(ProviderError) as caught:
        AzureSettings.parse(provider, settings)
    assert caught.value.hint, caught.value.message  # every refusal names its fix
    text = f"{caught.value.message} ({caught.value.hint})"
    for fragment in fragments:
        assert fragment in text, text


def test_the_defaults_are_an_azure_cvms() -> None:
    for provider in (SNP, TDX):
        parsed = AzureSettings.parse(provider, None)
        assert parsed == AzureSettings.parse(provider, {})
        assert parsed.tcti == "device:/dev/tpmrm0"
        assert parsed.ak_handle == 0x81000003
        assert parsed.user_data is True
        assert parsed.imds_url == "http://169.254.169.254"
        assert parsed.timeout_seconds == 10
        assert parsed.vcek is None and parsed.cert_chain == ()


def test_null_certificate_files_are_unset() -> None:
    """As docs/configuration.md writes the defaults."""
    parsed = AzureSettings.parse(SNP, {"vcek": None, "cert_chain": None})
    assert parsed == AzureSettings.parse(SNP, {})


def test_every_setting_is_read() -> None:
    parsed = AzureSettings.parse(
        SNP,
        {
            "tcti": "swtpm:host=127.0.0.1,port=2321",
            "ak_handle": "0x81000004",
            "user_data": False,
            "timeout_seconds": 2.5,
            "vcek": "/etc/cmcp/vcek.der",
            "cert_chain": ["/etc/cmcp/ask.der", "/etc/cmcp/ark.der"],
        },
    )
    assert parsed.tcti == "swtpm:host=127.0.0.1,port=2321"
    assert parsed.ak_handle == 0x81000004
    assert parsed.user_data is False
    assert parsed.timeout_seconds == 2.5
    assert parsed.vcek == Path("/etc/cmcp/vcek.der")
    assert parsed.cert_chain == (Path("/etc/cmcp/ask.der"), Path("/etc/cmcp/ark.der"))
    fetched = AzureSettings.parse(SNP, {"imds_url": "http://127.0.0.1:8080/"})
    assert fetched.imds_url == "http://127.0.0.1:8080"  # endpoint paths append to it
    assert AzureSettings.parse(TDX, {"imds_url": "http://127.0.0.1:8080"}).imds_url == (
        "http://127.0.0.1:8080"
    )
    one_file = AzureSettings.parse(SNP, {"vcek": "/v.pem", "cert_chain": "/chain.pem"})
    assert one_file.cert_chain == (Path("/chain.pem"),)
    assert AzureSettings.parse(SNP, {"ak_handle": 0x81000003}).ak_handle == 0x81000003


def test_unknown_and_misplaced_settings_are_refused() -> None:
    refused(SNP, {"tctl": "device:/dev/tpmrm0"}, "attestation.providers.azure-sev-snp", "tctl")
    refused(TDX, {"vcek": "/v.pem"}, "for SEV-SNP only", "remove vcek")
    refused(TDX, {"cert_chain": "/c.pem"}, "cert_chain is for SEV-SNP only")
    refused(SNP, ["tcti"], "must be a mapping")


@pytest.mark.parametrize(
    ("settings", "fragments"),
    [
        ({"tcti": ""}, ("azure-sev-snp.tcti must be a TCTI string",)),
        ({"tcti": " device:/dev/tpmrm0"}, ("tcti",)),
        ({"ak_handle": "0x01400001"}, ("ak_handle", "not a persistent handle")),
        ({"ak_handle": True}, ("ak_handle",)),
        ({"ak_handle": "81000003"}, ("ak_handle", '"0x81000003"')),
        ({"user_data": "yes"}, ("azure-sev-snp.user_data must be true or false",)),
        ({"user_data": 1}, ("user_data",)),
        ({"imds_url": "169.254.169.254"}, ("imds_url", "not http or https")),
        ({"imds_url": "ftp://169.254.169.254"}, ("scheme is ftp",)),
        ({"imds_url": "http://"}, ("names no host",)),
        ({"imds_url": "http://user:pw@127.0.0.1"}, ("carries credentials",)),
        ({"imds_url": "http://127.0.0.1/?a=b"}, ("query or a fragment",)),
        ({"imds_url": "http://127.0.0.1/#x"}, ("query or a fragment",)),
        ({"imds_url": "http://127.0.0.1:99999"}, ("is not a URL",)),
        ({"imds_url": 5}, ("must be an http:// or https:// URL",)),
        ({"timeout_seconds": 0}, ("timeout_seconds must be a number of seconds in (0, 120]",)),
        ({"timeout_seconds": 121}, ("timeout_seconds",)),
        ({"timeout_seconds": float("nan")}, ("timeout_seconds",)),
        ({"timeout_seconds": True}, ("timeout_seconds",)),
        ({"timeout_seconds": "10"}, ("timeout_seconds",)),
    ],
)
def test_each_unusable_value_is_refused_by_name(
    settings: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    refused(SNP, settings, *fragments)


def test_the_vcek_and_its_chain_are_given_together_as_absolute_paths() -> None:
    refused(SNP, {"vcek": "/v.pem"}, "vcek is set but", "cert_chain is not")
    refused(SNP, {"cert_chain": "/c.pem"}, "cert_chain is set but", "vcek is not")
    refused(SNP, {"vcek": "/v.pem", "cert_chain": None}, "vcek is set but")
    refused(SNP, {"vcek": "v.pem", "cert_chain": "/c.pem"}, "vcek must be an absolute file path")
    refused(SNP, {"vcek": "/v.pem", "cert_chain": []}, "cert_chain is an empty list")
    refused(SNP, {"vcek": "/v.pem", "cert_chain": ["/a.pem", 3]}, "cert_chain must be an absolute")


def test_an_imds_url_the_certificate_files_make_unused_is_refused() -> None:
    files = {"vcek": "/v.pem", "cert_chain": "/c.pem"}
    refused(SNP, {**files, "imds_url": "http://127.0.0.1:8080"}, "would not be used")
