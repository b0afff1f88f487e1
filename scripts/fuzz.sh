#!/usr/bin/env bash
# Runs fedgate's cargo-afl fuzz targets (fuzz/, issue 19) for a bounded time each and prints,
# per target, the executions, the paths (corpus entries) found, and the crashes and hangs.
#
#   scripts/fuzz.sh [SECONDS]      each target for SECONDS (default 60)
#   TARGETS="jid sasl" scripts/fuzz.sh 600    only these targets
#   JOBS=2 scripts/fuzz.sh 300     run two targets at a time
#
# Seeds are in fuzz/corpus/<target>/; AFL's state goes to fuzz/out/<target>/ (kept between
# runs and resumed). A crash's input is in fuzz/out/<target>/default/crashes/: replay it with
# `fuzz/target/release/<target> < FILE`, then add it as a regression test in the main crate.
set -euo pipefail

secs=${1:-60}
all="framer_split roundtrip stream_header dialback sasl sm jid handshake config"
targets=${TARGETS:-$all}
jobs=${JOBS:-1}
cd "$(dirname "$0")/../fuzz"

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install --locked cargo-afl
fi
# Builds AFL++'s runtime once per toolchain; it refuses (harmlessly) when already built.
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --locked

# AFL's checks that do not apply on a shared build machine: the CPU governor, a core of its
# own, and a core-dump handler that is not ours to change.
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_AUTORESUME=1

run() {
    local t=$1
    mkdir -p out
    cargo afl fuzz -V "$secs" -i "corpus/$t" -o "out/$t" "target/release/$t" \
        >"out/$t.log" 2>&1 || echo "$t: afl-fuzz failed, see fuzz/out/$t.log" >&2
}

running=0
for t in $targets; do
    run "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

stat() { sed -n "s/^$2 *: *//p" "out/$1/default/fuzzer_stats" 2>/dev/null || true; }
printf '%-14s %12s %8s %8s %6s %10s\n' target executions paths crashes hangs seconds
failed=0
for t in $targets; do
    crashes=$(stat "$t" saved_crashes)
    printf '%-14s %12s %8s %8s %6s %10s\n' "$t" "$(stat "$t" execs_done)" \
        "$(stat "$t" corpus_count)" "${crashes:-?}" "$(stat "$t" saved_hangs)" \
        "$(stat "$t" run_time)"
    if [ "${crashes:-0}" != 0 ]; then
        failed=1
        ls "out/$t/default/crashes/" | grep -v README | sed "s|^|  fuzz/out/$t/default/crashes/|"
    fi
done
exit $failed
