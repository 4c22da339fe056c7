#!/usr/bin/env bash
# The project's checks, as CI runs them and as people run them: formatting, lints, docs, tests.
# Needs only a Rust toolchain; tests that need root or kernel features set them up themselves
# (or skip with one line saying why). As root the multi-process tests run a second time with
# hugepages reserved and hugetlbfs mounted (ci/hugepages.sh, which puts both back).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
./ci/peers.sh
./ci/vm.sh
echo "== cargo test"
cargo test --workspace --locked
echo "== loom: the shared ring and the port table over every interleaving (ring.rs, ethdev.rs: loom_tests)"
RUSTFLAGS="--cfg loom" cargo test -p lab-core --release --locked --lib --target-dir target/loom loom
./ci/hugepages.sh
