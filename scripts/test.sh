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
