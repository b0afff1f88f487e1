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

echo "== format"
cargo fmt --all -- --check

echo "== unit and integration tests"
# Integration tests start fedgate instances on 127.77.x.y:5269 (the whole 127/8 is loopback)
# and a DNS server of their own on 127.0.0.1; nothing leaves the machine.
cargo test --locked --lib --bins --tests
