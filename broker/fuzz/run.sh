#!/usr/bin/env bash
# Bounded fuzz run of whole STOMP sessions against the broker: ./run.sh [SECONDS] (default 60).
#
# Works on a stable toolchain: cargo-fuzz passes a few -Z flags to rustc, which
# RUSTC_BOOTSTRAP=1 allows. The broker forbids unsafe code, so no sanitizer is needed
# (`--sanitizer none`). The libFuzzer summary (executions, coverage) is printed at the end.
# Exits non-zero when a crash is found; the input is left in artifacts/session/.
set -euo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p corpus/session
export RUSTC_BOOTSTRAP=1
# corpus/session collects new inputs (gitignored); seeds/session is read-only.
cargo fuzz run --sanitizer none session corpus/session seeds/session -- \
    -max_total_time="$seconds" \
    -max_len=4096 \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -print_final_stats=1
