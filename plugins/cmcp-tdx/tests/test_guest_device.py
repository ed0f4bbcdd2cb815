"""TDX_CMD_GET_REPORT0 on /dev/tdx_guest: the ioctl number and struct of
linux/tdx-guest.h, and the checks on the TDREPORT the kernel writes back."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cmcp_cli.attestation.api import ProviderError
from cmcp_tdx import guest_device
from cmcp_tdx.testing import FakeTdxGuest

DATA = bytes(range(64))


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "tdx_guest"
    path.write_bytes(b"")
    return path


def test_the_ioctl_number_is_linux_tdx_guest_h() -> None:
    assert guest_device.REPORT_REQ.size == 1088  # reportdata[64] + tdreport[1024]
    assert guest_device.TDX_CMD_GET_REPORT0 == 0xC4405401
    assert FakeTdxGuest.REQUEST == guest_device.TDX_CMD_GET_REPORT0


def test_a_tdreport_carrying_the_data_is_returned(device: Path) -> None:
    kernel = FakeTdxGuest(device)
    report = guest_device.get_tdreport(device, DATA, kernel)
    assert len(report) == 1024 and report[0] == 0x81 and report[128:192] == DATA
    assert kernel.calls == 1


def test_a_tdreport_for_other_data_is_refused(device: Path) -> None:
    with pytest.raises(ProviderError, match="does not carry the REPORTDATA"):
        guest_device.get_tdreport(device, DATA, FakeTdxGuest(device, report_data=bytes(64)))


def test_a_report_of_another_type_is_refused(device: Path) -> None:
    with pytest.raises(ProviderError, match="REPORTTYPE 0x00, not 0x81"):
        guest_device.get_tdreport(device, DATA, FakeTdxGuest(device, report_type=0))


def test_the_kernel_ioctl_on_a_file_that_is_not_the_device_fails_clearly(device: Path) -> None:
    # the real fcntl.ioctl: a regular file answers ENOTTY
    with pytest.raises(ProviderError, match=r"TDX_CMD_GET_REPORT0 on .* failed") as raised:
        guest_device.get_tdreport(device, DATA)
    assert raised.value.hint is not None and "tdx_guest" in raised.value.hint


def test_a_missing_device_is_named(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="does not exist") as raised:
        guest_device.get_tdreport(tmp_path / "none", DATA, FakeTdxGuest(tmp_path))
    assert raised.value.hint is not None and ".device" in raised.value.hint


def test_a_device_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match=re.escape(f"cannot open {tmp_path}")):
        guest_device.get_tdreport(tmp_path, DATA, FakeTdxGuest(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens the device whatever its mode")
def test_a_device_without_permission_says_how_to_grant_it(device: Path) -> None:
    device.chmod(0o400)
    with pytest.raises(ProviderError, match="permission denied") as raised:
        guest_device.get_tdreport(device, DATA, FakeTdxGuest(device))
    assert raised.value.hint is not None and "root" in raised.value.hint


def test_report_data_must_be_64_bytes(device: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        guest_device.get_tdreport(device, bytes(32), FakeTdxGuest(device))
