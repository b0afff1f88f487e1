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

# ---- interop peers (tests/interop): Prosody, ejabberd, slixmpp ---------------------------------
# The interop tests (tests/interop.rs) start Debian's Prosody and ejabberd as ordinary processes,
# each with its own config, data folder, certificates and private DNS, and drive a slixmpp client
# on them. Install what is missing. A policy-rc.d that answers 101 keeps the packages' postinst
# from starting system services that would grab ports 5222/5269/5280 on every interface; any
# that start anyway (a machine with a real init) are stopped and disabled afterwards.
interop_pkgs=()
need prosody || interop_pkgs+=(prosody)
need ejabberdctl || interop_pkgs+=(ejabberd)
dpkg -s lua-unbound >/dev/null 2>&1 || interop_pkgs+=(lua-unbound)
need unshare || interop_pkgs+=(util-linux)
if ((${#interop_pkgs[@]})); then
    echo "== installing interop peers: ${interop_pkgs[*]}"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${interop_pkgs[@]}"; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" apt-get install -y --no-install-recommends "${interop_pkgs[@]}"
    fi
    [[ -z $made_policy ]] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    for svc in prosody ejabberd; do
        if need systemctl && [[ -d /run/systemd/system ]]; then
            "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif [[ -x /etc/init.d/$svc ]]; then
            "${sudo[@]}" /etc/init.d/$svc stop >/dev/null 2>&1 || true
        fi
    done
fi
if ! python3 -c 'import slixmpp' >/dev/null 2>&1; then
    echo "== installing slixmpp"
    python3 -m pip install --quiet slixmpp
fi
# ---- end interop peers -------------------------------------------------------------------------

echo "== format"
cargo fmt --all -- --check

echo "== unit, integration and interop tests"
# Integration tests start fedgate instances on 127.77.x.y:5269 (the whole 127/8 is loopback)
# and a DNS server of their own on 127.0.0.1; interop tests (tests/interop) add Prosody and
# ejabberd on 127.77.x.y and a DNS server on 127.53.x.y:53; nothing leaves the machine.
cargo test --locked --lib --bins --tests
