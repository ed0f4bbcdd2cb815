#!/usr/bin/env bash
# One entry point for a fresh machine:
#   scripts/dev.sh demo   set up, then run the quickstart end to end
#   scripts/dev.sh test   set up, then run every check CI runs (lint, types, layering, tests)
#   scripts/dev.sh setup  only create .venv with cmcp and every plugin under plugins/, editable,
#                         and .venv-mcp1 with the MCP SDK 1.x for the compatibility tests
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

run_demo() {
    setup
    exec "$PY" examples/quickstart/demo.py "$@"
}

case "${1:-}" in
    setup) setup ;;
    test) shift; run_tests "$@" ;;
    demo) shift; run_demo "$@" ;;
    *) echo "usage: scripts/dev.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
