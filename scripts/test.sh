#!/usr/bin/env bash
# Runs every fedgate test. Installs what the tests need when it is missing, so it works on a
# fresh machine: `scripts/test.sh` (from the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
    echo "error: cargo is not installed; install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi
# rustfmt is part of the check; add it when the toolchain lacks it.
if ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add rustfmt
fi

# Installs Debian packages without starting their services (tests start what they need as
# ordinary processes, on loopback): a policy-rc.d that refuses every start, for the install only.
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    echo "== installing $* (Debian packages)"
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        created=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@"; then
        $sudo apt-get -o DPkg::Lock::Timeout=300 update
        $sudo apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@"
    fi
    if [ -n "$created" ]; then $sudo rm -f "$policy"; fi
}

echo "== test dependencies"
# Debian's Prometheus: the metrics tests run it against a live fedgate to evaluate every
# dashboard expression and alert rule, and check the rules with promtool.
if ! need prometheus || ! need promtool; then
    apt_install prometheus
fi
# ---- begin: slixmpp for the c2s core's tests (tests/core/client.py) ----
# The core's integration tests sign in with a real client library. Installed from PyPI when
# missing; the tests fail with a clear message without it.
if ! python3 -c 'import slixmpp' >/dev/null 2>&1; then
    if ! need python3; then
        echo "error: python3 is not installed; the core's tests need it (apt-get install python3 python3-pip)" >&2
        exit 1
    fi
    python3 -m pip install --quiet slixmpp || python3 -m pip install --quiet --break-system-packages slixmpp
fi
# ---- end: slixmpp ----

echo "== format"
cargo fmt --all -- --check

echo "== unit and integration tests"
# Integration tests start fedgate instances on 127.77.x.y:5269 (the whole 127/8 is loopback)
# and a DNS server of their own on 127.0.0.1; nothing leaves the machine.
cargo test --locked --lib --bins --tests
