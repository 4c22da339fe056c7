#!/usr/bin/env bash
# Instructions per frame of a NIC model's device work (the 82599, or the X710 with --i40e), counted by callgrind (deterministic:
# the same on any machine, unlike wall-clock figures on shared vCPUs). Runs
# emu/examples/model_frames (the model driven in one thread, no sockets) for two frame counts,
# collecting only inside the model's poll, and prints the difference per frame, so the setup's
# cost cancels out. `--rss` spreads a UDP mix over four queues by RSS; `--wire` takes every frame
# through the wire's buffer (no cut-through), as between two ports.
#
#   ci/instr-per-frame.sh [--rss] [--wire] [--i40e]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    echo "instr-per-frame: valgrind is missing (apt-get install valgrind)" >&2
    exit 2
fi
cargo build --release --quiet -p lab-emu --example model_frames
bin=target/release/examples/model_frames
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
collected() {
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" --toggle-collect='*DeviceModel>::poll' \
        "$bin" "$1" "${@:2}" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
a=$(collected 2016 "$@")
b=$(collected 12000 "$@")
per=$(( (b - a) / (12000 - 2016) ))
model="82599"
[[ " $* " == *" --i40e "* ]] && model="X710"
echo "$model model, 64-byte loopback${*:+ $*}: $per instructions per frame ($a at 2016 frames, $b at 12000)"
