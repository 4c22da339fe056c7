#!/usr/bin/env bash
# ci/fuzz.sh TARGET SECONDS: fuzzes one lab-fuzz target with AFL++ (cargo-afl) for SECONDS.
# Starts from the target's corpus (fuzz/corpus/TARGET), prints executions per second, coverage
# and what it found, and copies every crashing input into the corpus as crash-<sum> (the replay
# test in `cargo test -p lab-fuzz` then fails until it is fixed). Exits 1 on a crash.
# `ci/fuzz.sh list` names the targets. Installs cargo-afl (crates.io) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=$(sed -n 's/^    ("\([a-z_]*\)", [a-z_]*),$/\1/p' fuzz/src/lib.rs)
if [ "${1:-}" = list ]; then echo "$targets"; exit 0; fi
if [ $# -ne 2 ] || ! grep -qx "$1" <<<"$targets" || ! [[ "$2" =~ ^[0-9]+$ ]]; then
    echo "usage: ci/fuzz.sh TARGET SECONDS, TARGET one of:" $targets >&2
    exit 2
fi
target=$1 secs=$2
command -v cargo-afl >/dev/null || cargo install cargo-afl --locked
cargo afl build --release --manifest-path fuzz/afl/Cargo.toml
out=target/fuzz/$target
rm -rf "$out"
mkdir -p "$out"
# A shared machine, left as it was: no CPU pinning, no frequency checks, core_pattern untouched
# (a crash is still seen: the target aborts, which AFL++'s fork server reports as a crash).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
cargo afl fuzz -i "fuzz/corpus/$target" -o "$out" -V "$secs" -- fuzz/afl/target/release/lab-afl "$target" \
    > "$out/afl.log" 2>&1 || { tail -20 "$out/afl.log"; exit 1; }
stats=$out/default/fuzzer_stats
val() { sed -n "s/^$1 *: *//p" "$stats"; }
echo "$target: $(val execs_done) execs in $(val run_time) s, $(val execs_per_sec) execs/s," \
    "coverage $(val bitmap_cvg) of the map ($(val edges_found) edges), corpus $(val corpus_count)," \
    "crashes $(val saved_crashes), hangs $(val saved_hangs)"
crashes=0
for f in "$out"/default/crashes/id:*; do
    [ -e "$f" ] || continue
    sum=$(sha1sum "$f" | cut -c1-12)
    cp "$f" "fuzz/corpus/$target/crash-$sum"
    echo "crash: fuzz/corpus/$target/crash-$sum"
    crashes=$((crashes + 1))
done
[ "$crashes" = 0 ]
