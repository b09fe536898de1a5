#!/usr/bin/env bash
# The main job, end to end: build, start the bundled test server with
# FILES files (default 1,000,000), fetch them all into OUT with progress,
# print the summary and the per-shard status, stop the server.
#
#   scripts/demo.sh [FILES] [OUT] [extra bulkget fetch flags...]
#
# OUT defaults to a fresh directory under ${TMPDIR:-/tmp}. The fan-out
# layout is used because a million files in one directory is slow on most
# file systems (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

files=${1:-1000000}
out=${2:-$(mktemp -d "${TMPDIR:-/tmp}/bulkget-demo.XXXXXX")/out}
shift $(( $# > 2 ? 2 : $# ))

echo "==> building (release)"
cargo build --release --quiet --bins
bin=${CARGO_TARGET_DIR:-target}/release

server_log=$(mktemp)
"$bin/bulkget-server" --port 0 --files "$files" >"$server_log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$server_log"' EXIT
for _ in $(seq 100); do
  grep -q '^listening on ' "$server_log" && break
  sleep 0.05
done
url=$(sed -n 's/^listening on //p' "$server_log")
[ -n "$url" ] || { echo "bulkget-server did not start:"; cat "$server_log"; exit 1; }
echo "==> bulkget-server is serving $files files at $url"

echo "==> bulkget fetch $url $out --layout fanout $*"
set +e
"$bin/bulkget" fetch "$url" "$out" --layout fanout "$@"
code=$?
set -e

echo
echo "==> bulkget status $out/.bulkget"
"$bin/bulkget" status "$out/.bulkget" || true
echo
echo "files are in $out (exit code $code)"
exit $code
