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

# ---- test dependencies -------------------------------------------------------------------------
# - Debian's Prometheus (prometheus, promtool): the metrics tests run it against a live fedgate
#   and evaluate every dashboard expression and alert rule.
# - Debian's Prosody, ejabberd and jabberd2 (and lua-unbound, util-linux's unshare): the interop
#   tests (tests/interop/) start them as ordinary processes, each with its own config, data
#   folder, certificates and private DNS.
# - slixmpp from PyPI: the client library the core and interop tests drive.
# - Debian's systemd (systemd-analyze) and cargo-deb from crates.io: the package test.
# - Debian's postgresql: the core's storage tests run on SQLite and on a PostgreSQL that each
#   test run makes itself (initdb into a temporary folder, a Unix socket there, stopped after).
# A policy-rc.d that answers 101 keeps the packages' postinst from starting system services that
# would grab ports 5222/5269/5280/5347/9090 on every interface; any that start anyway (a machine
# with a real init) are stopped and disabled afterwards; so is the cluster Debian's postgresql
# makes.
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
pkgs=()
{ need prometheus && need promtool; } || pkgs+=(prometheus)
need prosody || pkgs+=(prosody)
need ejabberdctl || [[ -x /usr/sbin/ejabberdctl ]] || pkgs+=(ejabberd)
need jabberd2-router || [[ -x /usr/sbin/jabberd2-router ]] || pkgs+=(jabberd2)
dpkg -s lua-unbound >/dev/null 2>&1 || pkgs+=(lua-unbound)
need unshare || pkgs+=(util-linux)
need systemd-analyze || pkgs+=(systemd)   # the package test rates the systemd units
need initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || pkgs+=(postgresql)
if ((${#pkgs[@]})); then
    echo "== installing ${pkgs[*]} (Debian packages)"
    made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300)
    if ! "${apt[@]}" install -y --no-install-recommends "${pkgs[@]}"; then
        "${apt[@]}" update
        "${apt[@]}" install -y --no-install-recommends "${pkgs[@]}"
    fi
    [[ -z $made_policy ]] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    for svc in prosody ejabberd jabberd2 prometheus postgresql; do
        if need systemctl && [[ -d /run/systemd/system ]]; then
            units=("$svc")
            # jabberd2 has a unit per process besides jabberd.service (alias jabberd2.service).
            [[ $svc != jabberd2 ]] || units=(jabberd jabberd-router jabberd-sm jabberd-c2s jabberd-s2s)
            "${sudo[@]}" systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
        elif [[ -x /etc/init.d/$svc ]]; then
            "${sudo[@]}" /etc/init.d/$svc stop >/dev/null 2>&1 || true
        fi
    done
fi
if ! python3 -c 'import slixmpp' >/dev/null 2>&1; then
    echo "== installing slixmpp (PyPI)"
    python3 -m pip install --quiet slixmpp || python3 -m pip install --quiet --break-system-packages slixmpp
fi
# ---- end test dependencies ---------------------------------------------------------------------

echo "== format"
cargo fmt --all -- --check

echo "== unit, integration and interop tests"
# Integration tests start fedgate instances on 127.77.x.y:5269 (the whole 127/8 is loopback)
# and a DNS server of their own on 127.0.0.1; interop tests (tests/interop) add Prosody and
# ejabberd on 127.77.x.y and a DNS server on 127.53.x.y:53; nothing leaves the machine.
cargo test --locked --lib --bins --tests

# The release build for the package needs about 2 GB more. A machine short of disk gives the
# test build's space back first (it is rebuilt on the next run), rather than failing half-way.
free_kb=$(df -Pk target 2>/dev/null | awk 'NR == 2 {print $4}')
if [[ -n $free_kb && $free_kb -lt $((4 * 1024 * 1024)) && -d target/debug ]]; then
    echo "== only $((free_kb / 1024)) MB free: removing target/debug before the release build"
    rm -rf target/debug
fi

echo "== Debian package"
# Builds the .deb, installs it here, checks it, federates a message through it, purges it.
scripts/package-test.sh
