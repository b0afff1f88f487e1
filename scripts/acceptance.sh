#!/usr/bin/env bash
# Acceptance with real XMPP clients from Debian against the shipped config/fedgate.toml (the
# gateway with the core inside it, on 127.0.0.1:5222): go-sendxmpp and sendxmpp send a message
# with PLAIN over STARTTLS; mcabber and profanity sign in in tmux and send one too; bob (the
# slixmpp client of the tests) must receive each. profanity then turns on carbons, blocks a
# contact, adds a bookmark and generates its OMEMO keys, each without an error line. poezio
# signs in and must show no error or warning line. Prints one line per client (and profanity
# feature) and "N passed, N failed".
#
# Needs the shipped ports free (5222, 5223, 5269, 5270, 5347, 9269 on 127.0.0.1) and root to
# install the clients when missing. Not part of scripts/test.sh: the clients are interactive
# programs driven through tmux, slow and timing-sensitive; run it before a release.
set -uo pipefail
cd "$(dirname "$0")/.."

clients=(go-sendxmpp sendxmpp mcabber profanity poezio tmux)
missing=()
for c in "${clients[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if ((${#missing[@]})); then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi
[[ -x target/release/fedgate ]] || cargo build --release --locked

work=$(mktemp -d)
export HOME=$work/home
mkdir -p "$HOME"
pids=()
cleanup() {
    tmux kill-server 2>/dev/null || true
    # runuser keeps poezio alive past its tmux session.
    pkill -9 -u nobody -f /usr/bin/poezio 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP:-} ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
KEEP=${KEEP:-}

# The shipped configuration, as it is (its relative paths land in the copy's folder).
cp config/fedgate.toml "$work/fedgate.toml"
target/release/fedgate run --config "$work/fedgate.toml" > "$work/fedgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "fedgate ready" "$work/fedgate.log" && break; sleep 0.1; done
grep -q "fedgate ready" "$work/fedgate.log" || { cat "$work/fedgate.log"; exit 1; }
for u in alice bob carol dave erin; do
    echo "pw-$u" | target/release/fedgate core user add "$u@example.test" --config "$work/fedgate.toml" >/dev/null
done

mkfifo "$work/bob.in"
python3 tests/support/client.py --jid bob@example.test/r --password pw-bob --host 127.0.0.1 \
    --port 5222 < "$work/bob.in" > "$work/bob.out" 2> "$work/bob.err" &
pids+=($!)
exec 7> "$work/bob.in"
for _ in $(seq 100); do grep -q '"online"' "$work/bob.out" && break; sleep 0.1; done
# Available, so that messages to bob's bare JID reach this session.
echo '{"cmd": "presence"}' >&7

passed=0 failed=0
# received BODY: bob got a message with this body within 20 s.
received() {
    for _ in $(seq 200); do grep -q "\"body\": \"$1" "$work/bob.out" && return 0; sleep 0.1; done
    return 1
}
result() { # client, body, detail file (a body may end in a newline: sendxmpp sends one)
    if received "$2"; then
        echo "ok    $1: signed in with the shipped config and delivered \"$2\""
        passed=$((passed + 1))
    else
        echo "FAIL  $1: \"$2\" did not arrive; see below"
        tail -15 "$3" | sed 's/^/      /'
        failed=$((failed + 1))
    fi
}

echo "from go-sendxmpp" | go-sendxmpp -u alice@example.test -p pw-alice -j 127.0.0.1:5222 -n \
    bob@example.test > "$work/go-sendxmpp.log" 2>&1
result go-sendxmpp "from go-sendxmpp" "$work/go-sendxmpp.log"

echo "from sendxmpp" | sendxmpp -u carol -p pw-carol -j 127.0.0.1:5222 -o example.test -t -n \
    bob@example.test > "$work/sendxmpp.log" 2>&1
result sendxmpp "from sendxmpp" "$work/sendxmpp.log"

# mcabber: a config file, then /say to bob in its window.
mkdir -p "$HOME/.mcabber"
cat > "$HOME/.mcabber/mcabberrc" <<EOF
set jid = dave@example.test
set password = pw-dave
set server = 127.0.0.1
set port = 5222
set tls = 1
set ssl_ignore_checks = 1
set logging = 0
EOF
chmod 600 "$HOME/.mcabber/mcabberrc"
tmux new-session -d -s mcabber -x 200 -y 50 "mcabber -f $HOME/.mcabber/mcabberrc"
sleep 4
tmux send-keys -t mcabber "/msay begin" Enter "from mcabber" Enter "/msay send_to bob@example.test" Enter
sleep 2
tmux capture-pane -p -t mcabber > "$work/mcabber.log"
result mcabber "from mcabber" "$work/mcabber.log"

# profanity: connect with the server and port given, trust the certificate, message bob.
tmux new-session -d -s profanity -x 200 -y 50 "profanity"
sleep 2
tmux send-keys -t profanity "/connect erin@example.test server 127.0.0.1 port 5222 tls force" Enter
sleep 1
tmux send-keys -t profanity "pw-erin" Enter
sleep 3
tmux send-keys -t profanity "/tls allow" Enter
sleep 3
tmux send-keys -t profanity "/msg bob@example.test from profanity" Enter
sleep 2
tmux capture-pane -p -t profanity > "$work/profanity.log"
result profanity "from profanity" "$work/profanity.log"

# profanity's modern features on the same session (issue 15): carbons (XEP-0280), blocking
# (XEP-0191), a bookmark (XEP-0402 over PEP) and OMEMO setup (device list and bundle over
# PEP with publish-options); none may print an error line ("Server error ...", "... failed",
# "Error ..."), and each must print what profanity says when the server accepted it.
# (Only what these commands print: the window and tmux's history are cleared first, as the
# sign-in above printed a certificate warning before "/tls allow".)
# The /msg above left the chat window in front; commands print in the console (window 1).
tmux send-keys -t profanity "/win 1" Enter
sleep 1
tmux send-keys -t profanity "/clear" Enter
sleep 1
tmux clear-history -t profanity
tmux send-keys -t profanity "/carbons on" Enter
sleep 1
tmux send-keys -t profanity "/blocked add spam@example.test" Enter
sleep 1
tmux send-keys -t profanity "/bookmark add room@conference.example.test nick erin autojoin off" Enter
sleep 1
tmux send-keys -t profanity "/omemo gen" Enter
sleep 6
tmux capture-pane -p -t profanity > "$work/profanity-features.log"
profanity_feature() { # what, the line profanity prints on success
    if grep -qiE "(server error|error:|failed)" "$work/profanity-features.log"; then
        echo "FAIL  profanity $1: an error line:"
        grep -iE "(server error|error:|failed)" "$work/profanity-features.log" | sed 's/^/      /'
        failed=$((failed + 1))
    elif grep -qiE "$2" "$work/profanity-features.log"; then
        echo "ok    profanity $1: accepted, no error line"
        passed=$((passed + 1))
    else
        echo "FAIL  profanity $1: no \"$2\" line; the screen:"
        tail -15 "$work/profanity-features.log" | sed 's/^/      /'
        failed=$((failed + 1))
    fi
}
profanity_feature carbons "carbons.*(on|enabled)"
profanity_feature blocking "blocked.*spam@example.test|spam@example.test.*blocked"
profanity_feature bookmarks "bookmark added"
profanity_feature "OMEMO setup" "omemo.*(generated|materials)"

# poezio: a config file with the server and the certificate to trust, then /message bob.
mkdir -p "$HOME/.config/poezio"
cat > "$HOME/.config/poezio/poezio.cfg" <<EOF
[Poezio]
jid = alice@example.test/poezio
password = pw-alice
custom_host = 127.0.0.1
custom_port = 5222
# The self-signed certificate the shipped config made: poezio verifies it like any other.
ca_cert_path = $work/example.test.crt
EOF
# (poezio refuses to run as root.)
chown -R nobody "$HOME/.config/poezio"
mkdir -p "$HOME/.local" && chown -R nobody "$HOME/.local" "$HOME/.config"
chmod 755 "$work" "$HOME"
tmux new-session -d -s poezio -x 200 -y 50 "runuser -u nobody -- env HOME=$HOME poezio"
sleep 6
tmux capture-pane -p -t poezio > "$work/poezio.log"
# poezio takes no keys from tmux when run as another user (it must not run as root), so it
# only signs in here; what it told its user must have no error or warning line (such as "No
# remote bookmark storage available", which it says when the server's disco lacks PEP).
if grep -q "Authentication success" "$work/poezio.log" && ! grep -qE "(Error|Warning)>" "$work/poezio.log"; then
    echo "ok    poezio: signed in with the shipped config, no error or warning line"
    passed=$((passed + 1))
else
    echo "FAIL  poezio: did not sign in cleanly:"
    grep -E "(Info|Error|Warning)>" "$work/poezio.log" | sed 's/^[ │]*//; s/^/      /'
    failed=$((failed + 1))
fi

exec 7>&-
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
