"""The pieces every provider plugin shares: named checks, base64 members, settings, the
evidence object, the binding check, platform-policy files, and the one-line hook."""

from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

from cmcp_cli.attestation import software
from cmcp_cli.attestation.api import CheckStatus, ProviderError
from cmcp_cli.attestation.hookspecs import PROJECT, ProviderHooks, provide
from cmcp_cli.attestation.toolkit import (
    CheckFailed,
    CheckSkipped,
    base64_list,
    canonical_base64,
    evidence_object,
    hardware_verdict,
    read_policy_file,
    refused_as,
    require_binding,
    run_checks,
    settings_section,
)


def test_checks_run_in_order_and_a_bug_fails_closed() -> None:
    def skipped() -> str:
        raise CheckSkipped("no input")

    def failed() -> str:
        raise CheckFailed("does not hold")

    def broken() -> str:
        return str(1 // 0)

    checks = run_checks([("a", lambda: "holds"), ("b", skipped), ("c", failed), ("d", broken)])
    assert [(c.name, c.status) for c in checks] == [
        ("a", CheckStatus.PASS),
        ("b", CheckStatus.SKIP),
        ("c", CheckStatus.FAIL),
        ("d", CheckStatus.FAIL),
    ]
    assert [c.reason for c in checks[:3]] == ["holds", "no input", "does not hold"]
    assert "ZeroDivisionError" in checks[3].reason


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "non-empty base64 string"),
        ("", "non-empty base64 string"),
        ("AAE", "not standard base64"),  # padding missing
        ("AA E", "not standard base64"),
        ("AAF=", "not canonical padded base64"),  # non-zero padding bits: another spelling
        ("AAECAw==", "larger than 3 bytes"),
    ],
)
def test_base64_members_have_one_spelling_and_a_bound(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        canonical_base64(value, "report", limit=3)


def test_base64_members_decode_within_their_bound() -> None:
    assert canonical_base64("AAEC", "report", limit=3) == b"\x00\x01\x02"
    with pytest.raises(ValueError, match="is 6 bytes, more than 4"):  # 8 characters: up to 6
        canonical_base64("AAECAwQF", "report", limit=4)


def test_a_settings_section_is_a_mapping_of_known_names() -> None:
    section = "attestation.providers.example"
    assert settings_section(None, section=section, accepted=("a",), provider="X") == {}
    assert settings_section({"a": 1}, section=section, accepted=("a",), provider="X") == {"a": 1}
    with pytest.raises(ProviderError, match="must be a mapping") as wrong:
        settings_section([1], section=section, accepted=("a",), provider="X")
    assert wrong.value.hint is not None
    with pytest.raises(ProviderError, match="unknown setting") as unknown:
        settings_section({"b": 1, "a": 2}, section=section, accepted=("a",), provider="X")
    assert "b" in unknown.value.message
    assert unknown.value.hint is not None
    assert "accepts a" in unknown.value.hint


def test_hardware_attested_needs_every_required_check_passed_and_none_failed() -> None:
    checks = run_checks([("a", lambda: "holds"), ("b", lambda: "holds")])
    assert hardware_verdict(checks, ("a", "b"), "sha384:" + "00" * 48).hardware_attested
    assert not hardware_verdict(checks, ("a", "missing"), None).hardware_attested

    def skipped() -> str:
        raise CheckSkipped("not applicable")

    def failed() -> str:
        raise CheckFailed("does not hold")

    partial = run_checks([("a", lambda: "holds"), ("b", skipped)])
    assert not hardware_verdict(partial, ("a", "b"), None).hardware_attested
    assert hardware_verdict(partial, ("a", "b"), None, may_skip=("b",)).hardware_attested
    extra_failure = run_checks([("a", lambda: "holds"), ("c", failed)])
    assert not hardware_verdict(extra_failure, ("a",), None).hardware_attested


def test_provide_is_the_hook_implementation_of_its_specs() -> None:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(ProviderHooks)

    class Plugin:
        cmcp_attestation_providers = staticmethod(provide(software.SPEC))

    manager.register(Plugin())
    assert manager.hook.cmcp_attestation_providers() == [[software.SPEC]]
    with pytest.raises(TypeError, match="ProviderSpec"):
        provide()


def test_the_evidence_object_and_its_members() -> None:
    problems: list[str] = []
    assert evidence_object(["x"], ("a",), problems) is None
    assert problems == ["the evidence is a list, not a JSON object"]
    problems.clear()
    assert evidence_object({"a": 1, "z": 2}, ("a",), problems) == {"a": 1, "z": 2}
    assert problems == ["unknown member(s) z"]
    assert base64_list(["AAE=", "Ag=="], "chain", limit=4, most=2) == [b"\0\1", b"\2"]
    for value, problem in (([], "1 to 2"), (["AA=="] * 3, "1 to 2"), (["AAAAAAA="], "more than 4")):
        with pytest.raises(ValueError, match=problem):
            base64_list(value, "chain", limit=4, most=2)


def test_require_binding() -> None:
    binding = bytes(range(32))
    assert require_binding(binding, binding, what="The nonce", made="it was made") == (
        "The nonce is the session binding."
    )
    with pytest.raises(CheckFailed, match=r"is not the session binding .*another session"):
        require_binding(bytes(32), binding, what="The nonce", made="it was made")


def test_a_policy_file_is_read_beside_the_policy(tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(b"pem")
    path, data = read_policy_file("root.pem", tmp_path, "[x] roots")
    assert (path, data) == (tmp_path / "root.pem", b"pem")
    absolute, _ = read_policy_file(str(tmp_path / "root.pem"), Path("/nowhere"), "[x] roots")
    assert absolute == tmp_path / "root.pem"
    with pytest.raises(ProviderError, match="cannot be read") as missing:
        read_policy_file("root.pem", tmp_path / "elsewhere", "[x] roots")
    assert "folder of the platform-policy file" in (missing.value.hint or "")
    with pytest.raises(ProviderError, match="larger than 2 bytes"):
        read_policy_file("root.pem", tmp_path, "[x] roots", limit=2)


def test_refused_as_turns_only_the_named_errors_into_a_provider_error() -> None:
    with pytest.raises(ProviderError) as refused, refused_as(ValueError, "--x f.bin", hint="fix"):
        raise ValueError("bad byte")
    assert (refused.value.message, refused.value.hint) == ("--x f.bin: bad byte", "fix")
    with pytest.raises(KeyError), refused_as(ValueError, "--x f.bin", hint="fix"):
        raise KeyError("other")
