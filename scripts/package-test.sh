#!/usr/bin/env bash
# Builds the Debian package, installs it on this machine, checks what it put where, rates its
# systemd unit, starts the installed binary the way the unit does (as the `fedgate` user, with
# the unit's config path) and federates a message through it with a second fedgate, then
# purges the package. Needs root (dpkg) and Debian's systemd (systemd-analyze); called by
# scripts/test.sh. Everything runs on loopback; nothing resolves names (static routes, and a
# nameserver that does not exist).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package test: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "needs root (dpkg -i); run scripts/test.sh as root"
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
command -v systemd-analyze >/dev/null 2>&1 || fail "systemd-analyze is missing (Debian's systemd package)"

echo "== package: cargo deb"
cargo deb --locked --quiet
deb=$(ls -t target/debian/fedgate_*.deb | head -1)

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    dpkg --purge fedgate >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== package: dpkg -i $deb"
dpkg --purge fedgate >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null

echo "== package: files, owners and modes"
want() { # path, "user:group mode"
    local got
    got=$(stat -c '%U:%G %a' "$1") || fail "$1 is missing"
    [[ $got == "$2" ]] || fail "$1 is $got, want $2"
}
getent passwd fedgate >/dev/null || fail "no fedgate user"
[[ $(getent passwd fedgate | cut -d: -f7) == /usr/sbin/nologin ]] || fail "fedgate can log in"
want /usr/bin/fedgate "root:root 755"
want /etc/fedgate "root:fedgate 750"
want /etc/fedgate/fedgate.toml "root:fedgate 640"
want /etc/fedgate/core.toml "root:fedgate 640"
want /etc/fedgate/backend.secret "root:fedgate 640"
want /var/lib/fedgate "fedgate:fedgate 750"
[[ $(wc -c < /etc/fedgate/backend.secret) -ge 64 ]] || fail "the backend secret is too short"
for unit in fedgate fedgate-core; do
    want "/lib/systemd/system/$unit.service" "root:root 644"
done
dpkg-query -W -f='${Conffiles}\n' fedgate | grep -q /etc/fedgate/fedgate.toml ||
    fail "/etc/fedgate/fedgate.toml is not a conffile"
/usr/bin/fedgate check config /etc/fedgate/fedgate.toml >/dev/null ||
    fail "the packaged configuration does not pass fedgate check config"

echo "== package: systemd-analyze verify and security"
for unit in fedgate fedgate-core; do
    systemd-analyze verify "/lib/systemd/system/$unit.service"
    rating=$(systemd-analyze security --offline=true "/lib/systemd/system/$unit.service" |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    echo "   $unit.service exposure: $rating"
    awk -v r="$rating" 'BEGIN { exit !(r != "" && r <= 2.0) }' ||
        fail "$unit.service is rated $rating, above 2.0"
done

echo "== package: the installed fedgate federates a message"
# The unit's config path with test values: domain pkg.test, loopback ports, a static route to
# the second gateway, no name resolution.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
a_s2s=$(port); a_c2s=$(port); a_comp=$(port); a_metrics=$(port)
b_s2s=$(port); b_c2s=$(port); b_comp=$(port)
sed -e 's/example\.org/pkg.test/g' \
    -e "s/\"0.0.0.0:5269\"/\"127.0.0.1:$a_s2s\"/" -e 's/direct_tls_listen = \["0.0.0.0:5270"\]/direct_tls_listen = []/' \
    -e "s/\"127.0.0.1:5347\"/\"127.0.0.1:$a_comp\"/" -e "s/\"0.0.0.0:5222\"/\"127.0.0.1:$a_c2s\"/" \
    -e 's/direct_tls_listen = \["0.0.0.0:5223"\]/direct_tls_listen = []/' \
    -e "s/\"127.0.0.1:9269\"/\"127.0.0.1:$a_metrics\"/" \
    /etc/fedgate/fedgate.toml > "$work/a.toml"
cat >> "$work/a.toml" <<EOF

[dns]
nameservers = ["127.0.0.1:9"]

[[s2s.route]]
domain = "b.test"
target = "127.0.0.1:$b_s2s"
EOF
install -o root -g fedgate -m 0640 "$work/a.toml" /etc/fedgate/fedgate.toml
mkdir -p "$work/b"
cat > "$work/b/b.toml" <<EOF
[s2s]
listen = ["127.0.0.1:$b_s2s"]
direct_tls_listen = []
[dns]
nameservers = ["127.0.0.1:9"]
[[s2s.route]]
domain = "pkg.test"
target = "127.0.0.1:$a_s2s"
[component]
listen = "127.0.0.1:$b_comp"
[[component.backend]]
domain = "b.test"
secret = "b-secret"
[core]
listen = ["127.0.0.1:$b_c2s"]
direct_tls_listen = []
[[core.domain]]
name = "b.test"
[metrics]
enabled = false
[[tls.certificate]]
domains = ["b.test"]
cert = "b.crt"
key = "b.key"
self_signed = true
EOF
# As the unit runs it: user fedgate, working directory /var/lib/fedgate, the unit's config.
(cd /var/lib/fedgate && exec runuser -u fedgate -- /usr/bin/fedgate run --config /etc/fedgate/fedgate.toml) \
    > "$work/a.log" 2>&1 &
pids+=($!)
target/release/fedgate run --config "$work/b/b.toml" > "$work/b.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    grep -q "fedgate ready" "$work/a.log" && grep -q "fedgate ready" "$work/b.log" && break
    sleep 0.1
done
grep -q "fedgate ready" "$work/a.log" || { cat "$work/a.log"; fail "the installed fedgate did not start"; }
python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$a_metrics/readyz')" ||
    fail "/readyz is not 200"
[[ -f /var/lib/fedgate/dialback.secret && $(stat -c %U /var/lib/fedgate/dialback.secret) == fedgate ]] ||
    fail "the dialback secret was not created in /var/lib/fedgate"
# Accounts, as the package's user.
echo pw-a | runuser -u fedgate -- /usr/bin/fedgate core user add alice@pkg.test --config /etc/fedgate/fedgate.toml >/dev/null
echo pw-b | target/release/fedgate core user add bob@b.test --config "$work/b/b.toml" >/dev/null
# bob waits; alice sends across the two gateways.
mkfifo "$work/bob.in"
python3 tests/support/client.py --jid bob@b.test/r --password pw-b --host 127.0.0.1 --port "$b_c2s" \
    < "$work/bob.in" > "$work/bob.out" 2> "$work/bob.err" &
pids+=($!)
exec 7> "$work/bob.in"
for _ in $(seq 100); do grep -q '"online"' "$work/bob.out" && break; sleep 0.1; done
printf '%s\n' '{"cmd": "message", "to": "bob@b.test/r", "id": "pkg1", "body": "from the package"}' \
    '{"cmd": "quit"}' |
    python3 tests/support/client.py --jid alice@pkg.test/r --password pw-a --host 127.0.0.1 \
        --port "$a_c2s" > "$work/alice.out" 2> "$work/alice.err"
for _ in $(seq 100); do grep -q '"pkg1"' "$work/bob.out" && break; sleep 0.1; done
exec 7>&-
grep -q '"id": "pkg1"' "$work/bob.out" || {
    tail -20 "$work/a.log" "$work/b.log" "$work/alice.out" "$work/bob.out" >&2
    fail "the message did not cross the federation"
}
echo "   alice@pkg.test (installed fedgate) -> bob@b.test: delivered"

echo "== package: purge"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
dpkg --purge fedgate >/dev/null
[[ ! -e /var/lib/fedgate && ! -e /usr/bin/fedgate && ! -e /etc/fedgate/fedgate.toml ]] ||
    fail "purge left files behind"
echo "package test: 1 passed, 0 failed"
