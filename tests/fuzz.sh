#!/usr/bin/env bash
# Bounded cargo-fuzz run of one target: tests/fuzz.sh FUZZ_DIR TARGET SECONDS [libFuzzer flags...]
#
# Works on a stable toolchain: cargo-fuzz passes a few -Z flags to rustc, which RUSTC_BOOTSTRAP=1
# allows. Our crates forbid unsafe code, so no sanitizer is needed (`--sanitizer none`), which
# also avoids needing the sanitizer runtimes. Installs cargo-fuzz on first use. New inputs go to
# FUZZ_DIR/corpus/TARGET (gitignored); FUZZ_DIR/seeds/TARGET is read-only. The libFuzzer summary
# (executions, coverage) is printed at the end. Exits non-zero when a crash is found; the input
# is left in FUZZ_DIR/artifacts/TARGET/.
set -euo pipefail

dir="$1" target="$2" seconds="$3"
shift 3
cd "$dir"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p "corpus/$target"
export RUSTC_BOOTSTRAP=1
cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" \
    -max_len=4096 \
    -rss_limit_mb=2048 \
    -print_final_stats=1 \
    "$@"
