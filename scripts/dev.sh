#!/usr/bin/env bash
# One entry point for a fresh machine:
#   scripts/dev.sh demo   set up .venv, then run the quickstart end to end
#   scripts/dev.sh test   set up, then run every check CI runs (lint, types, layering, tests)
#   scripts/dev.sh setup  only set up: .venv with cmcp-gateway and every plugin under plugins/,
#                         editable; .wheelhouse/ with the wheels of their runtime dependencies
#                         (the wheel install test installs from it, offline); .venv-mcp1 with
#                         the MCP SDK 1.x for the compatibility tests; and .conformance/ with
#                         Node.js and the MCP conformance suite
#   scripts/dev.sh conformance  set up, then run only the MCP conformance test (docs/conformance.md)
# Each part records a stamp of what it installed from (pyproject.toml files, constraints*.txt,
# the plugin list) and is skipped while the stamp matches and its venv still works.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
PY="$VENV/bin/python"
# The official MCP SDK 1.x cannot share a venv with the 2.x the tests use: the
# compatibility tests run its clients and servers from this one, in a subprocess.
VENV_MCP1=.venv-mcp1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    [ "$(id -u)" -eq 0 ]
}

ensure_python() {
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        if as_root && command -v apt-get >/dev/null 2>&1; then
            say "installing python3 and python3-venv (Debian)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev >/dev/null
        else
            echo "error: python3 (>= 3.11) with the venv module is required; install it and re-run" >&2
            exit 2
        fi
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: python3 is $(python3 -V 2>&1); cmcp needs Python >= 3.11" >&2
        exit 2
    fi
}

# The TPM plugin's collector is built on tpm2-pytss, which compiles against libtss2, and its
# tests run a real software TPM (swtpm) and cross-check with tpm2-tools. The SEV-SNP and
# TDX measurers are tested on Debian's OVMF firmware.
SYSTEM_PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config ovmf)

system_tools_present() {
    command -v swtpm >/dev/null 2>&1 && command -v swtpm_setup >/dev/null 2>&1 \
        && command -v tpm2_eventlog >/dev/null 2>&1 \
        && pkg-config --exists tss2-esys tss2-tctildr 2>/dev/null \
        && [ -f /usr/share/ovmf/OVMF.fd ]
}

# Succeeds when the TPM tools are here or were just installed (root on Debian).
ensure_system_tools() {
    system_tools_present && return 0
    if as_root && command -v apt-get >/dev/null 2>&1; then
        say "installing ${SYSTEM_PACKAGES[*]} (Debian)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${SYSTEM_PACKAGES[@]}" >/dev/null
        return 0
    fi
    return 1
}

# The plugins under plugins/ that are Python projects.
plugin_dirs() {
    local plugin
    for plugin in plugins/*/; do
        [ -f "$plugin/pyproject.toml" ] && echo "${plugin%/}"
    done
    return 0
}

# A stamp of everything an installation is made from: the project files, the pins, the plugin
# list and whatever else the caller names (an install with or without the TPM collector).
stamp_of() {
    {
        printf '%s\n' "$@"
        python3 -V
        plugin_dirs
        cat pyproject.toml plugins/*/pyproject.toml constraints*.txt
    } | sha256sum | cut -d' ' -f1
}

# fresh STAMP_FILE STAMP: the recorded stamp is STAMP (the install it names can be skipped).
fresh() {
    [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}

# The main venv: cmcp-gateway and every plugin, editable, with the test tools.
setup_main() {
    local with_collectors="$1"
    if ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        say "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    local stamp_file="$VENV/.cmcp-setup" stamp
    stamp="$(stamp_of main "collectors=$with_collectors")"
    # The venv works when cmcp_cli imports from this tree (a venv made for another checkout
    # is reinstalled), the MCP SDK imports, and cmcp-gateway and every plugin are installed.
    local plugin_names
    plugin_names="$(plugin_dirs | xargs -r -n1 basename | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one argument per plugin name
    if fresh "$stamp_file" "$stamp" && "$PY" - cmcp-gateway $plugin_names >/dev/null 2>&1 <<'PY'; then
import importlib.metadata
import pathlib
import sys

import cmcp_cli
import mcp  # noqa: F401

for name in sys.argv[1:]:
    importlib.metadata.distribution(name)
here = pathlib.Path("src").resolve()
sys.exit(pathlib.Path(cmcp_cli.__file__).resolve().parents[1] != here)
PY
        say "$VENV is up to date (scripts/dev.sh setup reinstalls when pyproject.toml or constraints change)"
        return 0
    fi
    rm -f "$stamp_file"
    local editable=(-e ".[test]") plugin names="cmcp-gateway"
    for plugin in $(plugin_dirs); do
        # a plugin's `collector` extra holds what only the TEE host needs (tpm2-pytss);
        # its `measure` extra what `cmcp measure` needs (sev-snp-measure)
        local extras=()
        if [ "$with_collectors" -eq 1 ] && grep -q '^collector *=' "$plugin/pyproject.toml"; then
            extras+=(collector)
        fi
        if grep -q '^measure *=' "$plugin/pyproject.toml"; then
            extras+=(measure)
        fi
        if [ "${#extras[@]}" -gt 0 ]; then
            editable+=(-e "$plugin[$(IFS=,; echo "${extras[*]}")]")
        else
            editable+=(-e "$plugin")
        fi
        names+=" $(basename "$plugin")"
    done
    # A venv may hold a checkout installed editable under the name `cmcp` (a PyPI name this
    # project does not own): its console script would shadow cmcp-gateway's, so it goes.
    if "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if "editable" in (m.distribution("cmcp").read_text("direct_url.json") or "") else 1)' >/dev/null 2>&1; then
        say "removing the editable install named cmcp (this project is cmcp-gateway)"
        "$PY" -m pip uninstall --disable-pip-version-check -q -y cmcp
    fi
    # The pip that `python3 -m venv` bundles may be too old to resolve the plugins' own
    # dependencies on each other (pip 23.2 finds no cmcp-sev for cmcp-azure when cmcp-sev is
    # named with an extra): set-up uses the pinned pip.
    "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt --upgrade pip
    # tpm2-pytss has no wheel on PyPI: pip compiles it once (about a minute) and keeps the
    # wheel in its own cache (~/.cache/pip), so later set-ups on this machine reuse it.
    say "installing into $VENV (editable): $names"
    "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt "${editable[@]}"
    echo "$stamp" >"$stamp_file"
}

# .wheelhouse/: wheels of everything a release install needs besides our own wheels, so that
# tests/test_wheels.py installs cmcp-gateway and the plugins into a fresh venv with no index:
# the runtime dependencies (pinned by constraints.txt), the MCP SDK the demo's agent and
# server use, and the build backend. The plugins' `collector` extra (tpm2-pytss, compiled
# against libtss2) and `measure` extra are left out: the wheel test runs neither.
WHEELHOUSE=.wheelhouse

setup_wheelhouse() {
    local stamp_file="$WHEELHOUSE/.cmcp-setup" stamp
    stamp="$(stamp_of wheelhouse)"
    fresh "$stamp_file" "$stamp" && return 0
    local requirements
    requirements="$("$PY" - <<'PY'
import re
import tomllib
from pathlib import Path

projects = [Path("pyproject.toml"), *sorted(Path("plugins").glob("*/pyproject.toml"))]
tables = [tomllib.loads(project.read_text()) for project in projects]
own = {table["project"]["name"] for table in tables}
needed = [r for table in tables for r in table["project"].get("dependencies", [])]
needed += tables[0]["build-system"]["requires"]
for requirement in dict.fromkeys([*needed, "mcp"]):
    if re.match(r"[A-Za-z0-9._-]+", requirement).group() not in own:
        print(requirement)
PY
)"
    say "filling $WHEELHOUSE with the wheels of the runtime dependencies (pip's cache is reused)"
    rm -rf "$WHEELHOUSE"
    mkdir -p "$WHEELHOUSE"
    local wanted=()
    mapfile -t wanted <<<"$requirements"
    "$PY" -m pip wheel --disable-pip-version-check -q -c constraints.txt -w "$WHEELHOUSE" \
        "${wanted[@]}"
    echo "$stamp" >"$stamp_file"
}

setup() {
    ensure_python
    local with_collectors=1
    if ! ensure_system_tools; then
        with_collectors=0
        if [ "${CMCP_SETUP_FOR:-}" = test ]; then
            echo "error: the plugin tests need ${SYSTEM_PACKAGES[*]}; as root run:" >&2
            echo "  apt-get install ${SYSTEM_PACKAGES[*]}" >&2
            exit 2
        fi
        say "no system packages and not root: plugins installed without their collectors"
    fi
    setup_main "$with_collectors"
    setup_wheelhouse
    setup_mcp1
    if [ "${CMCP_SETUP_FOR:-}" = test ] || command -v npm >/dev/null 2>&1 || as_root; then
        setup_conformance
    else
        say "no npm and not root: the MCP conformance suite is not installed (the tests need it)"
    fi
}

setup_mcp1() {
    if ! "$VENV_MCP1/bin/python" -c 'import sys' >/dev/null 2>&1; then
        say "creating $VENV_MCP1"
        rm -rf "$VENV_MCP1"
        python3 -m venv "$VENV_MCP1"
    fi
    local stamp_file="$VENV_MCP1/.cmcp-setup" stamp
    stamp="$(stamp_of mcp1)"
    if fresh "$stamp_file" "$stamp" && "$VENV_MCP1/bin/python" -c 'import mcp' >/dev/null 2>&1; then
        return 0
    fi
    rm -f "$stamp_file"
    say "installing the MCP SDK 1.x into $VENV_MCP1 (compatibility tests)"
    "$VENV_MCP1/bin/python" -m pip install --disable-pip-version-check -q \
        -c constraints-mcp1.txt mcp
    echo "$stamp" >"$stamp_file"
}

# The official MCP conformance suite (npm) runs on Node.js >= 22. Both come from the npm
# registry, pinned, into .conformance/ (git-ignored): Node as the registry's `node-linux-<arch>`
# package, and one suite per protocol revision, each in its own folder. npm installs with
# --no-save --no-package-lock, so nothing here records a registry host. The system's npm is only
# the installer; the tests run the pinned Node.
CONFORMANCE=.conformance
NODE_VERSION=24.11.1
SUITE_2025_11_25=0.1.16          # --spec-version 2025-11-25
SUITE_2026_07_28=0.2.0-alpha.12  # --spec-version 2026-07-28 (its scenarios are only here)

ensure_npm() {
    command -v npm >/dev/null 2>&1 && return 0
    if as_root && command -v apt-get >/dev/null 2>&1; then
        say "installing nodejs and npm (Debian), to install the conformance suite's Node.js"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
        return 0
    fi
    echo "error: npm is required to install the MCP conformance suite; as root run:" >&2
    echo "  apt-get install nodejs npm" >&2
    exit 2
}

# The version in <folder>/node_modules/<package>/package.json, empty when absent.
installed_version() {
    local manifest="$1/node_modules/$2/package.json"
    [ -f "$manifest" ] || return 0
    sed -n 's/^  "version": "\(.*\)",$/\1/p' "$manifest" | head -n 1
}

# npm_pin FOLDER PACKAGE VERSION: install exactly VERSION into FOLDER unless it is there.
npm_pin() {
    local folder="$CONFORMANCE/$1" package="$2" version="$3"
    [ "$(installed_version "$folder" "$package")" = "$version" ] && return 0
    ensure_npm
    say "installing $package@$version into $folder"
    rm -rf "$folder"
    mkdir -p "$folder"
    # --prefix: install into this folder, never into a package.json or node_modules above it
    npm install --prefix "$folder" --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "$package@$version" >/dev/null
    if [ "$(installed_version "$folder" "$package")" != "$version" ]; then
        echo "error: npm did not install $package@$version into $folder" >&2
        exit 2
    fi
}

setup_conformance() {
    local arch
    case "$(uname -m)" in
        x86_64 | amd64) arch=x64 ;;
        aarch64 | arm64) arch=arm64 ;;
        *) echo "error: no node-linux package for $(uname -m); the conformance suite needs Node.js" >&2
           exit 2 ;;
    esac
    npm_pin node "node-linux-$arch" "$NODE_VERSION"
    npm_pin suite-2025-11-25 @modelcontextprotocol/conformance "$SUITE_2025_11_25"
    npm_pin suite-2026-07-28 @modelcontextprotocol/conformance "$SUITE_2026_07_28"
}

# step NAME COMMAND...: run one check, record "NAME<TAB>exit status<TAB>seconds" in $STEPS.
# The command runs as a child, which the TERM trap of run_checks stops.
step() {
    local name="$1" rc=0 started=$SECONDS
    shift
    say "$name"
    "$@" &
    STEP_CHILD=$!
    wait "$STEP_CHILD" || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >>"$STEPS"
    return 0
}

# The checks that read the sources (lint, format, types, layering), one after the other;
# each runs even when one before it failed, so one run names every problem.
run_checks() {
    STEP_CHILD=""
    trap 'kill "$STEP_CHILD" 2>/dev/null; exit 143' TERM
    local bin="$VENV/bin"
    step "ruff check" "$bin/ruff" check .
    step "ruff format" "$bin/ruff" format --check .
    # Plugin wheels are type-checked with the host; each plugin's tests on their own, since
    # test modules of different plugins share names (conftest, test_contract).
    local extra=() dir
    for dir in plugins/*/src; do
        [ -d "$dir" ] && extra+=("$dir")
    done
    step "mypy --strict" "$bin/mypy" src tests benchmarks examples "${extra[@]}"
    for dir in plugins/*/tests; do
        if [ -d "$dir" ]; then
            step "mypy --strict ($dir)" "$bin/mypy" "$dir"
        fi
    done
    # tests/compat runs on the MCP SDK 1.x, so it is checked against that venv's packages.
    step "mypy --strict (tests/compat, against the MCP SDK 1.x)" \
        "$bin/mypy" --python-executable "$VENV_MCP1/bin/python" tests/compat/*.py
    step "import layering" "$bin/lint-imports"
}

# The counts of pytest's closing line ("3 failed, 1815 passed, 10 skipped in 512.00s"),
# read from its output in $1: "PASSED FAILED SKIPPED", errors counted as failures; nothing
# when the output has no closing line.
pytest_counts() {
    local line count word passed=0 failed=0 skipped=0
    line="$(sed 's/\x1b\[[0-9;]*m//g' "$1" \
        | grep -E '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s( \(.*\))?( =+)?$' | tail -n 1)" || return 0
    while read -r count word; do
        case "$word" in
            passed) passed="$count" ;;
            failed | error | errors) failed=$((failed + count)) ;;
            skipped) skipped="$count" ;;
        esac
    done < <(grep -oE '[0-9]+ [a-z]+' <<<"$line")
    echo "$passed $failed $skipped"
}

# pytest runs in worker processes, one per core, each taking whole test files (a module's
# fixtures, the gateways and swtpms it starts, stay in one worker); the checks run beside it.
# Most tests wait on the processes they start, so the cores are shared with little loss.
# pytest's output streams as it runs; the checks' output is kept and printed whole after it,
# then a summary of both. `scripts/dev.sh test -n 0 ...` runs pytest in one process.
run_tests() {
    CMCP_SETUP_FOR=test setup
    local work
    work="$(mktemp -d)"
    STEPS="$work/steps"
    : >"$STEPS"
    local started=$SECONDS checks_pid
    run_checks >"$work/checks.log" 2>&1 &
    checks_pid=$!
    # shellcheck disable=SC2064  # expanded here: the trap outlives these locals
    trap "kill $checks_pid 2>/dev/null; rm -rf '$work'" EXIT
    say "lint, format, types and import layering run beside pytest; their output follows it"
    say "pytest"
    local color=() rc=0
    [ -t 1 ] && color=(--color=yes)
    "$VENV/bin/pytest" -n auto --dist loadfile "${color[@]}" "$@" 2>&1 \
        | tee "$work/pytest.log" || rc=$?
    local pytest_seconds=$((SECONDS - started))
    wait "$checks_pid" 2>/dev/null || true
    # shellcheck disable=SC2064  # as above
    trap "rm -rf '$work'" EXIT
    say "lint, format, types and import layering (ran beside pytest)"
    cat "$work/checks.log"

    say "summary"
    local name status seconds failed_checks=0 checks=0 checks_seconds=0
    while IFS=$'\t' read -r name status seconds; do
        checks=$((checks + 1))
        checks_seconds=$((checks_seconds + seconds))
        if [ "$status" -eq 0 ]; then
            printf '  %-56s %4d s  passed\n' "$name" "$seconds"
        else
            printf '  %-56s %4d s  FAILED (exit %s)\n' "$name" "$seconds" "$status"
            failed_checks=$((failed_checks + 1))
        fi
    done <"$STEPS"
    if [ "$checks" -eq 0 ]; then
        echo "  the checks did not run (see their output above)"
        failed_checks=1
    fi
    printf '  checks: %d of %d passed in %d s\n' \
        "$((checks - failed_checks))" "$checks" "$checks_seconds"
    local counts
    counts="$(pytest_counts "$work/pytest.log")"
    printf '  pytest: exit %d after %d s\n' "$rc" "$pytest_seconds"
    if [ "$rc" -eq 5 ]; then
        echo "error: pytest collected no tests; that is a failure, not a pass" >&2
        rc=1
    elif [ -z "$counts" ]; then
        echo "error: pytest printed no closing line (exit $rc)" >&2
        [ "$rc" -eq 0 ] && rc=1
    fi
    if [ -n "$counts" ]; then
        local passed failed skipped
        read -r passed failed skipped <<<"$counts"
        printf 'pytest: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
    fi
    if [ "$failed_checks" -ne 0 ] && [ "$rc" -eq 0 ]; then
        rc=1
    fi
    return "$rc"
}

run_conformance() {
    setup
    setup_conformance  # stops with the fix when npm is missing
    exec "$VENV/bin/pytest" -m conformance tests/test_conformance.py "$@"
}

# The demo needs only .venv: no system packages are installed for it, and the TPM collector
# is built only where its library already is.
run_demo() {
    ensure_python
    local with_collectors=0
    system_tools_present && with_collectors=1
    setup_main "$with_collectors"
    exec "$PY" examples/quickstart/demo.py "$@"
}

case "${1:-}" in
    setup) setup ;;
    test) shift; run_tests "$@" ;;
    demo) shift; run_demo "$@" ;;
    conformance) shift; run_conformance "$@" ;;
    *) echo "usage: scripts/dev.sh {demo|test|setup|conformance} [args...]" >&2; exit 2 ;;
esac
