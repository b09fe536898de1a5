#!/usr/bin/env bash
# Fuzz the two parsers of untrusted bytes:
#
#   list_page     bulkget_coordinator::lister::parse_page   (list pages from the server)
#   frame_decode  bulkget_protocol::frame::decode           (frames on the worker sockets)
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#        (default: 60 seconds, both targets)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain
# (`rustup toolchain install nightly`). Without them the script says so and
# runs the stable stand-ins instead, the same checks over a fixed set of
# ~50,000 generated inputs each, which also run in every `cargo test`
# (BULKGET_FUZZ_STABLE=1 forces that, e.g. in CI on stable Rust).
#
# New interesting inputs go to fuzz/corpus/TARGET (not committed); the
# committed seeds are in fuzz/seeds/TARGET. A crash is saved under
# fuzz/artifacts/TARGET/ and makes the script fail: reproduce it with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# then turn it into a unit test next to the parser before fixing it.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(list_page frame_decode)
fi

stable_fallback() {
    echo "fuzz.sh: $1" >&2
    echo "fuzz.sh: running the stable stand-ins instead (no coverage guidance, fixed inputs)" >&2
    cd "$root"
    cargo test -p bulkget-coordinator --lib -- lister::tests::parse_page_survives_mutated_and_random_input
    cargo test -p bulkget-protocol --test frame_fuzz
    echo "fuzz.sh: stand-ins passed; cargo-fuzz did NOT run" >&2
}

if [ -n "${BULKGET_FUZZ_STABLE:-}" ]; then
    stable_fallback "BULKGET_FUZZ_STABLE is set"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    stable_fallback "cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    stable_fallback "no nightly toolchain (rustup toolchain install nightly); cargo-fuzz needs one"
    exit 0
fi

cd "$root/fuzz"
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz.sh: $t for ${secs}s" >&2
    # -rss_limit_mb / -malloc_limit_mb: an allocation driven by a length in
    # the input (the bug class these parsers are most exposed to) is a crash.
    if ! cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -malloc_limit_mb=512 \
        -max_len=65536 -timeout=10 -print_final_stats=1; then
        echo "fuzz.sh: $t FAILED; see fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit "$status"
