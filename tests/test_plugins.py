"""Provider plugins: discovered per entry point, failures reported, conflicts refused,
dispatch by evidence type; the built-in software provider passes the contract suite."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint, distributions
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_cli.attestation import api, software
from cmcp_cli.attestation.api import ProviderSpec
from cmcp_cli.attestation.manager import ENTRY_POINT_GROUP, load_providers
from cmcp_cli.config import CmcpConfig, Environment
from cmcp_cli.errors import UsageError
from cmcp_cli.gateway.preflight.measuring import measure_options
from cmcp_cli.gateway.preflight.report import check_config
from cmcp_cli.gateway.runtime import StartupError, choose_attestor
from cmcp_cli.testing.provider_contract import ProviderContract
from tests.gateway_support import write_config
from tests.support import REPO, run_cmcp

PLUGIN_SOURCE = """
from cmcp_cli.attestation import api
from cmcp_cli.attestation.api import Detection, EvidenceVerdict, Check, ProviderSpec
from cmcp_cli.attestation.hookspecs import hookimpl

class Collector(api.Collector):
    def detect(self, settings): return Detection(False, "no {name} device here")
    def prepare(self, facts, settings): pass
    def collect(self, binding, settings): raise RuntimeError("no device")
    def close(self): pass

class Verifier(api.Verifier):
    def verify(self, evidence, trust):
        return EvidenceVerdict((Check.failed("evidence.shape", "fake"),), hardware_attested=False)

SPEC = ProviderSpec(name="{name}", platform="tpm2", evidence_types=({types},),
                    collector=__name__ + ":Collector", verifier=__name__ + ":Verifier")

class Plugin:
    @hookimpl
    def cmcp_attestation_providers(self):
        {body}

plugin = Plugin()
"""


# A provider whose collector (and measurer) module raises what `{raises}` raises when it
# is imported.
LOADER_SOURCE = """
from cmcp_cli.attestation.api import ProviderError, ProviderSpec
from cmcp_cli.attestation.hookspecs import hookimpl

if __name__.endswith("_parts"):
    {raises}

class Plugin:
    @hookimpl
    def cmcp_attestation_providers(self):
        parts = __name__ + "_parts"
        return [ProviderSpec(name="{name}", platform="tpm2", evidence_types=("{name}-v1",),
                             collector=parts + ":Collector", verifier=parts + ":Verifier",
                             measurer=parts + ":Measurer")]

plugin = Plugin()
"""
# provider name -> (module, distribution, what importing its parts raises)
LOADERS = {
    # an import that fails, as the plugin wrote it
    "nolib-tee": ("nolibplug", "cmcp-nolib", "import cmcp_nolib_vendor_sdk"),
    # the plugin says so, with its own hint
    "says-tee": (
        "saysplug",
        "cmcp-says",
        "raise ProviderError('the vendor SDK is missing', hint='pip install cmcp-says[sdk]')",
    ),
    # a bug
    "buggy": ("buggyplug", "cmcp-buggy", "raise RuntimeError('a bug in the loader')"),
}


def install(site: Path, dist: str, version: str, module: str, source: str) -> None:
    """A real installed distribution: a module and a dist-info with an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{module} = {module}:plugin\n")


def site_entry_points(site: Path) -> list[EntryPoint]:
    """The test site's plugins only: whatever else is installed here stays out."""
    return [
        entry
        for dist in distributions(path=[str(site)])
        for entry in dist.entry_points
        if entry.group == ENTRY_POINT_GROUP
    ]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    install(
        site,
        "cmcp-faketee",
        "1.2.3",
        "faketee",
        PLUGIN_SOURCE.format(name="fake-tee", types='"fake-v1"', body="return [SPEC]"),
    )
    install(
        site,
        "cmcp-broken",
        "0.1",
        "brokenplug",
        "raise ImportError('libfake.so.1: cannot open shared object file')\n",
    )
    install(
        site,
        "cmcp-raises",
        "0.2",
        "raisesplug",
        PLUGIN_SOURCE.format(
            name="raises", types='"r-v1"', body="raise RuntimeError('hook exploded')"
        ),
    )
    install(
        site,
        "cmcp-badreturn",
        "0.3",
        "badreturn",
        PLUGIN_SOURCE.format(name="bad", types='"b-v1"', body="return 'not specs'"),
    )
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    for name in ("faketee", "brokenplug", "raisesplug", "badreturn", "clashplug"):
        sys.modules.pop(name, None)


def test_each_entry_point_loads_on_its_own(site: Path) -> None:
    registry = load_providers(site_entry_points(site))
    assert set(registry.providers) == {"software-only", "fake-tee"}
    fake = registry.providers["fake-tee"]
    assert (fake.distribution, fake.version) == ("cmcp-faketee", "1.2.3")
    failures = {f.distribution: f.error for f in registry.failures}
    assert "libfake.so.1" in failures["cmcp-broken"]
    assert failures["cmcp-raises"] == "RuntimeError: hook exploded"
    assert "must return a list of ProviderSpec" in failures["cmcp-badreturn"]
    assert registry.for_evidence_type("fake-v1") is fake
    assert registry.for_evidence_type(software.EVIDENCE_TYPE) is registry.providers["software-only"]
    assert registry.for_evidence_type("unknown") is None


def test_two_providers_claiming_one_evidence_type_are_both_refused(site: Path) -> None:
    install(
        site,
        "cmcp-clash",
        "9.9",
        "clashplug",
        PLUGIN_SOURCE.format(name="clash", types='"fake-v1", "c-v1"', body="return [SPEC]"),
    )
    registry = load_providers(site_entry_points(site))
    assert "fake-tee" not in registry.providers and "clash" not in registry.providers
    conflict = registry.refused_evidence_type("fake-v1")
    assert conflict is not None
    assert conflict.distribution == "cmcp-faketee and cmcp-clash"
    assert "both claim evidence type 'fake-v1'" in conflict.error
    # the clashing plugin's other type went with it, and verify must say why
    assert registry.refused_evidence_type("c-v1") is conflict
    assert conflict.withdrawn == ("c-v1", "fake-v1")


def test_cmcp_plugins_lists_providers_and_failures(site: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_cmcp("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["providers"]}
    assert rows["fake-tee"]["distribution"] == "cmcp-faketee"
    assert rows["fake-tee"]["detected"] is False
    assert rows["fake-tee"]["detail"] == "no fake-tee device here"
    assert rows["software-only"]["detected"] is True
    assert {f["distribution"] for f in report["failures"]} == {
        "cmcp-broken",
        "cmcp-raises",
        "cmcp-badreturn",
    }
    human = run_cmcp("plugins", env=env)
    assert human.returncode == 0
    assert "failed to load" in human.stderr and "Traceback" not in human.stderr


def test_a_collector_that_cannot_load_is_unavailable_whichever_plugin_ships_it(
    site: Path, tmp_path: Path
) -> None:
    for name, (module, dist, raises) in LOADERS.items():
        source = LOADER_SOURCE.format(name=name, raises=raises)
        install(site, dist, "1.0", module, source)
        (site / f"{module}_parts.py").write_text(textwrap.dedent(source))
    try:
        env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        listed = run_cmcp("plugins", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = {row["name"]: row for row in listed.json()["providers"]}
        assert rows["nolib-tee"]["state"] == rows["says-tee"]["state"] == "unavailable"
        assert "No module named 'cmcp_nolib_vendor_sdk'" in rows["nolib-tee"]["detail"]
        assert "cmcp-nolib 1.0" in rows["nolib-tee"]["hint"]
        assert (rows["says-tee"]["detail"], rows["says-tee"]["hint"]) == (
            "the vendor SDK is missing",
            "pip install cmcp-says[sdk]",
        )
        assert rows["buggy"]["state"] == "failed"  # a bug is not passed off as unavailable
        assert "RuntimeError: a bug in the loader" in rows["buggy"]["detail"]

        registry = load_providers(site_entry_points(site))
        # each as the provider a config names (the config admits a fixed set of names)
        as_named = {"sev-snp": "nolib-tee", "tdx": "says-tee", "opaque": "buggy"}
        for name, plugin in as_named.items():
            found = registry.providers[plugin]
            registry.providers[name] = dataclasses.replace(
                found, spec=dataclasses.replace(found.spec, name=name)
            )
        for name, hint in (("sev-snp", "cmcp-nolib 1.0"), ("tdx", "pip install cmcp-says[sdk]")):
            config = write_config(
                tmp_path, "http://127.0.0.1:9/mcp", attestation={"provider": name}
            )
            (error,) = check_config(config, {"CMCP_DEV_MODE": "1"}, registry).errors
            assert error.message.startswith(f"attestation.provider: {name} is unavailable here")
            assert hint in (error.hint or "")
            chosen = CmcpConfig.model_validate(yaml.safe_load(config.read_text()))
            with pytest.raises(StartupError, match=f"{name!r} is unavailable here") as refused:
                choose_attestor(chosen, Environment(dev_mode=True), registry)
            assert hint in (refused.value.hint or "")
            with pytest.raises(UsageError, match=f"{name!r} cannot measure here") as unusable:
                measure_options(registry, name)
            assert hint in (unusable.value.hint or "")
        # the bug, as the provider a config names: its traceback is kept
        config = write_config(
            tmp_path, "http://127.0.0.1:9/mcp", attestation={"provider": "opaque"}
        )
        with pytest.raises(RuntimeError, match="a bug in the loader"):
            check_config(config, {"CMCP_DEV_MODE": "1"}, registry)
    finally:
        for module, _, _ in LOADERS.values():
            sys.modules.pop(module, None)
            sys.modules.pop(f"{module}_parts", None)


def site_without_plugins(tmp_path: Path) -> Path:
    """This environment's site-packages as a host without any cmcp-* plugin sees it: every
    entry linked except the plugins' distributions and their editable-install hooks."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    bare = tmp_path / "bare-site"
    bare.mkdir()
    for entry in site_packages.iterdir():
        plugin = re.match(r"(__editable__\.)?cmcp_[a-z]+-", entry.name.replace("cmcp-", "cmcp_"))
        if plugin is None:
            (bare / entry.name).symlink_to(entry)
    return bare


def test_plugins_are_listed_only_when_installed(tmp_path: Path) -> None:
    installed = run_cmcp("plugins", "--json").json()
    names = {row["name"] for row in installed["providers"]}
    assert {"software-only", "tpm"} <= names  # the development venv has every plugin
    assert installed["failures"] == []
    # -S: no site hooks, so the sys.path below is all there is (cmcp's own source on it)
    bare = subprocess.run(
        [sys.executable, "-S", "-m", "cmcp_cli", "plugins", "--json"],
        env={
            "PYTHONPATH": os.pathsep.join([str(site_without_plugins(tmp_path)), str(REPO / "src")])
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bare.returncode == 0, bare.stderr
    report = json.loads(bare.stdout)
    assert [row["name"] for row in report["providers"]] == ["software-only"]
    assert report["failures"] == []


class TestSoftwareProviderContract(ProviderContract):
    @pytest.fixture
    def provider_spec(self) -> ProviderSpec:
        return software.SPEC


class _HalfCollector(api.Collector):
    """Subclasses the Protocol but leaves `collect` and `close` out."""

    def detect(self, settings: Mapping[str, Any]) -> api.Detection:  # noqa: ARG002
        return api.Detection(False, "never asked")

    def prepare(self, facts: api.GatewayFacts, settings: Mapping[str, Any]) -> None:  # noqa: ARG002
        return None


def test_a_part_reference_must_name_a_class_of_its_protocol() -> None:
    with pytest.raises(ValueError, match="not a `module:Class` reference"):
        dataclasses.replace(software.SPEC, collector="cmcp_cli.attestation.software")
    wrong = dataclasses.replace(software.SPEC, collector=software.SPEC.verifier)
    with pytest.raises(
        TypeError, match="SoftwareVerifier is not a class that subclasses Collector"
    ):
        wrong.load_collector()
    half = dataclasses.replace(software.SPEC, collector=f"{__name__}:_HalfCollector")
    with pytest.raises(TypeError, match="abstract"):
        half.load_collector()  # a part missing a method is refused when made, not when called
    with pytest.raises(TypeError, match="use load_collector"):
        software.SPEC.load_device_collector()
