#!/usr/bin/env bash
# One entry point for a fresh machine:
#   scripts/dev.sh demo   set up, then run the quickstart end to end
#   scripts/dev.sh test   set up, then run every check CI runs (lint, types, layering, tests)
#   scripts/dev.sh setup  only create .venv with cmcp and every plugin under plugins/, editable,
#                         .venv-mcp1 with the MCP SDK 1.x for the compatibility tests, and
#                         .conformance/ with Node.js and the MCP conformance suite
#   scripts/dev.sh conformance  set up, then run only the MCP conformance test (docs/conformance.md)
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
    if ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        say "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    local editable=(-e ".[test]")
    local plugin names="cmcp"
    for plugin in plugins/*/; do
        if [ -f "$plugin/pyproject.toml" ]; then
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
                editable+=(-e "${plugin%/}[$(IFS=,; echo "${extras[*]}")]")
            else
                editable+=(-e "$plugin")
            fi
            names+=" $(basename "$plugin")"
        fi
    done
    # tpm2-pytss has no wheel on PyPI: pip compiles it once (about a minute) and keeps the
    # wheel in its own cache (~/.cache/pip), so later set-ups on this machine reuse it.
    say "installing into $VENV (editable): $names"
    "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt "${editable[@]}"
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
    say "installing the MCP SDK 1.x into $VENV_MCP1 (compatibility tests)"
    "$VENV_MCP1/bin/python" -m pip install --disable-pip-version-check -q \
        -c constraints-mcp1.txt mcp
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

run_tests() {
    CMCP_SETUP_FOR=test setup
    local bin="$VENV/bin"
    say "ruff check";    "$bin/ruff" check .
    say "ruff format";   "$bin/ruff" format --check .
    # Plugin wheels are type-checked with the host; each plugin's tests on their own, since
    # test modules of different plugins share names (conftest, test_contract).
    local extra=() dir
    for dir in plugins/*/src; do
        [ -d "$dir" ] && extra+=("$dir")
    done
    say "mypy --strict"; "$bin/mypy" src tests benchmarks examples "${extra[@]}"
    for dir in plugins/*/tests; do
        if [ -d "$dir" ]; then
            say "mypy --strict ($dir)"; "$bin/mypy" "$dir"
        fi
    done
    # tests/compat runs on the MCP SDK 1.x, so it is checked against that venv's packages.
    say "mypy --strict (tests/compat, against the MCP SDK 1.x)"
    "$bin/mypy" --python-executable "$VENV_MCP1/bin/python" tests/compat/*.py
    say "import layering"; "$bin/lint-imports"
    say "pytest"
    local rc=0
    "$bin/pytest" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "error: pytest collected no tests; that is a failure, not a pass" >&2
        exit 1
    fi
    return "$rc"
}

run_conformance() {
    setup
    setup_conformance  # stops with the fix when npm is missing
    exec "$VENV/bin/pytest" -m conformance tests/test_conformance.py "$@"
}

run_demo() {
    setup
    exec "$PY" examples/quickstart/demo.py "$@"
}

case "${1:-}" in
    setup) setup ;;
    test) shift; run_tests "$@" ;;
    demo) shift; run_demo "$@" ;;
    conformance) shift; run_conformance "$@" ;;
    *) echo "usage: scripts/dev.sh {demo|test|setup|conformance} [args...]" >&2; exit 2 ;;
esac
