"""The Containerfile: read as a container builder reads it (what it states about the image:
base, user, health check, what is installed and from where), its health check run against a
real gateway, and the image built where buildah or podman runs."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from tests.gateway_support import Served
from tests.support import REPO

CONTAINERFILE = REPO / "Containerfile"
PLUGINS = sorted(p.parent.name for p in (REPO / "plugins").glob("*/pyproject.toml"))
SLIM_DEBIAN = re.compile(
    r"(docker\.io/)?(library/)?(debian:bookworm-slim|python:3\.1[1-9]-slim-bookworm)(@sha256:[0-9a-f]{64})?"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the stage from {self.base} has no {keyword}"
        return found[-1]


def parse(text: str) -> list[Stage]:
    """Stages of a Containerfile: continuation lines joined, comments dropped, `${ARG}` in
    FROM replaced by the ARG's default given before the first FROM."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Containerfile ends in a continuation"
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            arguments[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m[1]], parts[0])
            stage_name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(CONTAINERFILE.read_text())


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), value
    return parsed


def _healthcheck_command(final: Stage) -> list[str]:
    healthcheck = final.last("HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    return _exec_form(command.strip())


def test_the_image_is_slim_debian_with_the_wheels_built_in_a_first_stage(
    stages: list[Stage],
) -> None:
    assert len(stages) == 2
    build = stages[0]
    for stage in stages:
        assert SLIM_DEBIAN.fullmatch(stage.base), stage.base
    # the wheels of cmcp-gateway and of every plugin come from the first stage
    wheel_builds = [run for run in build.all("RUN") if " pip wheel " in f" {run} "]
    assert len(wheel_builds) == 1
    built = shlex.split(wheel_builds[0])
    assert "." in built and "-c" in built and "constraints.txt" in built
    assert {f"./plugins/{name}" for name in PLUGINS} <= set(built), built
    copied = " ".join(build.all("COPY"))
    assert "src" in copied and "plugins" in copied


def test_the_final_stage_installs_only_those_wheels_no_source_and_no_editable(
    stages: list[Stage],
) -> None:
    build, final = stages
    assert build.name is not None
    # nothing of the checkout is copied into the final image
    assert final.all("COPY") == [] and final.all("ADD") == []
    installs = [run for run in final.all("RUN") if " pip install " in f" {run} "]
    assert len(installs) == 1
    words = shlex.split(installs[0])
    mount = next(word for word in words if word.startswith("--mount="))
    assert f"from={build.name}" in mount and "source=/wheels" in mount
    assert "--no-index" in words
    assert words[words.index("--find-links") + 1] == "/wheels"
    assert not {"-e", "--editable", "."} & set(words)
    assert not [word for word in words if word.startswith(("/build", "./", "git+", "file:"))]
    names = {"cmcp-gateway", *PLUGINS}
    assert names <= set(words), words


def test_the_gateway_runs_as_a_non_root_user_from_the_environment(stages: list[Stage]) -> None:
    final = stages[-1]
    user = final.last("USER")
    uid = user.split(":")[0]
    assert uid not in {"root", "0"} and uid.isdigit(), user
    assert any(f"--uid {uid}" in run for run in final.all("RUN")), "the user is not created"
    assert _exec_form(final.last("ENTRYPOINT")) == ["cmcp"]
    assert _exec_form(final.last("CMD")) == ["start"]
    environment = " ".join(final.all("ENV"))
    assert "CEDAR_POLICY_PATH=/etc/cmcp/policies" in environment
    listen = re.search(r"CMCP_LISTEN_ADDR=0\.0\.0\.0:(\d+)", environment)
    assert listen is not None, environment
    assert final.last("EXPOSE") == listen[1]
    assert "CMCP_BEARER_TOKEN" not in environment  # a secret is passed at run time


def test_the_healthcheck_asks_healthz_with_python(stages: list[Stage]) -> None:
    command = _healthcheck_command(stages[-1])
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "curl" not in command and "wget" not in command


def test_the_healthcheck_passes_on_a_serving_gateway_and_fails_without_one(
    gateway: Served,
) -> None:
    code = _healthcheck_command(parse(CONTAINERFILE.read_text())[-1])[2]

    def probe(port: int) -> int:
        return subprocess.run(
            [sys.executable, "-c", code],
            env={"CMCP_LISTEN_ADDR": f"0.0.0.0:{port}", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode

    assert probe(gateway.port) == 0
    gateway.stop()
    assert probe(gateway.port) != 0


# buildah runs each RUN step in chroot isolation: no OCI runtime and cgroup set-up needed, so
# it builds inside CI containers too (as root).
ISOLATION = {"podman": [], "buildah": ["--isolation", "chroot"]}


def _builder() -> str | None:
    for tool in ("podman", "buildah"):
        if shutil.which(tool):
            return tool
    return None


@pytest.mark.container
def test_the_image_builds_and_runs_cmcp(stages: list[Stage]) -> None:
    tool = _builder()
    if tool is None:
        pytest.skip("neither podman nor buildah is installed (Debian: apt-get install buildah)")
    base = stages[-1].base
    if _inspect(tool, base).returncode != 0:
        pulled = subprocess.run(
            [tool, "pull", base], capture_output=True, text=True, timeout=300, check=False
        )
        if pulled.returncode != 0:
            pytest.skip(f"{tool} cannot pull the base image {base} here: {pulled.stderr.strip()}")
    tag = "localhost/cmcp-gateway:test"
    build = [tool, "build", *ISOLATION[tool], "--format", "docker", "-t", tag]
    build += ["-f", str(CONTAINERFILE), str(REPO)]
    built = subprocess.run(build, capture_output=True, text=True, timeout=900, check=False)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    text = _inspect(tool, tag).stdout
    assert '"10001:10001"' in text and "/healthz" in text, text
    version = _in_image(tool, tag, ["cmcp", "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("cmcp ") and "unknown" not in version.stdout
    listed = _in_image(tool, tag, ["cmcp", "plugins", "--json"])
    assert listed.returncode == 0, listed.stderr
    providers = {row["name"]: row["distribution"] for row in json.loads(listed.stdout)["providers"]}
    assert providers == {
        "software-only": "cmcp-gateway",
        "tpm": "cmcp-tpm",
        "sev-snp": "cmcp-sev",
        "tdx": "cmcp-tdx",
        "opaque": "cmcp-opaque",
        "azure-sev-snp": "cmcp-azure",
        "azure-tdx": "cmcp-azure",
    }


def _inspect(tool: str, image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "inspect", "--type", "image", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _in_image(tool: str, tag: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    """A command in a container of the image, as its user, with its environment."""
    if tool == "podman":
        return subprocess.run(
            [tool, "run", "--rm", "--entrypoint", command[0], tag, *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    container = subprocess.run(
        [tool, "from", tag], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    try:
        return subprocess.run(
            [tool, "run", *ISOLATION[tool], container, "--", *command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        subprocess.run([tool, "rm", container], capture_output=True, timeout=60, check=False)
