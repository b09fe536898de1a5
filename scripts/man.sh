#!/usr/bin/env bash
# Generates the man pages from the command line's own definition (clap_mangen
# through the hidden `bulkget man` subcommand): bulkget.1 and one page per
# subcommand (bulkget-fetch.1, bulkget-list.1, ...).
#
#   scripts/man.sh [DIR]      # default: target/man
#
# Read one with `man -l target/man/bulkget-fetch.1`, or install them with
# `install -Dm644 -t /usr/local/share/man/man1 target/man/*.1`.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-${CARGO_TARGET_DIR:-target}/man}
cargo build --quiet --bin bulkget
"${CARGO_TARGET_DIR:-target}/debug/bulkget" man "$dir"
ls "$dir"/*.1
