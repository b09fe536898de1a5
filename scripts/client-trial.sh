#!/usr/bin/env bash
# Pooled hyper client against one task per connection, on the worker's
# single-threaded runtime (crates/worker/examples/client_trial.rs).
#
#   scripts/client-trial.sh [--runs R] [--files N] [--conns "8 32 128"]
#                           [--modes "tasks pool pool-bare"] [--no-build]
#                           [--nice N]
#
# Builds in release, starts one bulkget-server on 127.0.0.1 with N files
# (one runtime thread, pinned to CPU 0), and runs the trial client pinned to
# CPU 1: for each C, R rounds, each round running every mode once. The order
# of the modes rotates from round to round, so that neither mode always runs
# first (warmer caches) or last (after the other's connections closed), and
# paired runs sit seconds apart, so a change in machine load hits both
# modes alike. Prints every run, then a Markdown table of medians with the
# ratio of each pooled mode to `tasks` at the same C.
#
# Modes (see the example's documentation):
#   tasks      the engine's design: C tasks, each owning a bulkget_http::Conn
#   pool       hyper-util's legacy Client, same timeouts and checks as Conn
#   pool-bare  the same Client with no timeouts: the pool's cost alone
#
# --nice N runs server and client at that nice level (e.g. -10 while other
# jobs compile on the machine: it shrinks their share of the pinned CPUs
# for both modes alike, which narrows the spread without biasing a ratio).
# With autogroup scheduling on (/proc/sys/kernel/sched_autogroup_enabled),
# a process's nice only ranks it inside its own session's group, and groups
# share a CPU equally: `nice -n -10` alone does nothing against a build in
# another terminal. So the script then re-runs itself in a new session (its
# own autogroup, holding only the trial) and gives that group the nice level.
#
# Only loopback is used. The server is stopped on exit, whatever the exit.

set -euo pipefail
orig_args=("$@")

runs=5
files=200000
conns="8 32 128"
modes="tasks pool pool-bare"
build=1
nice_level=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --files) files="$2"; shift 2 ;;
        --conns) conns="$2"; shift 2 ;;
        --modes) modes="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --nice) nice_level="$2"; shift 2 ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "client-trial.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=lib/autogroup.sh
. "$(dirname "$0")/lib/autogroup.sh"
own_autogroup "$nice_level" "$0" "${orig_args[@]}"
cd "$(dirname "$0")/.."
read -r -a mode_list <<<"$modes"
read -r -a conn_list <<<"$conns"

if [[ $build -eq 1 ]]; then
    # Two invocations on purpose: building the example together with the
    # binaries would unify its dev-dependency features (hyper-util's
    # client-legacy) into the server too, and the server under test should
    # be the one everyone else builds.
    cargo build --release -p bulkget --bins
    cargo build --release -p bulkget-worker --example client_trial
fi
server_bin=target/release/bulkget-server
client_bin=target/release/examples/client_trial

# Server and client on separate CPUs, so the client's CPU per file is what
# limits the client and the two never steal each other's time slices.
server_pin=()
client_pin=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    server_pin=(taskset -c 0)
    client_pin=(taskset -c 1)
else
    echo "note: fewer than 2 CPUs or no taskset; server and client are not pinned" >&2
fi
if [[ -n $nice_level ]]; then
    # nice and taskset both exec their command, so $! stays the server's id.
    server_pin=(nice -n "$nice_level" "${server_pin[@]}")
    client_pin=(nice -n "$nice_level" "${client_pin[@]}")
fi

scratch=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# taskset execs the server, so $! is the server's own process id.
"${server_pin[@]}" "$server_bin" --addr 127.0.0.1 --port 0 --threads 1 \
    --files "$files" >"$scratch/server.out" 2>&1 &
server_pid=$!
url=""
for _ in $(seq 100); do
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$scratch/server.out" || true)
    [[ -n $url ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$scratch/server.out" >&2; exit 1; }
    sleep 0.1
done
[[ -n $url ]] || { echo "server did not start" >&2; exit 1; }

echo "# client trial: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "N=$files, C in {$conns}, $runs rounds, modes: $modes; server $url (${server_pin[*]:-unpinned} --threads 1), client ${client_pin[*]:-unpinned}"
# Conn (crates/http) is what `tasks` measures; name its exact source when
# the working tree differs from the commit, so a table can be traced.
if ! git diff --quiet HEAD -- crates/http 2>/dev/null; then
    echo "crates/http has uncommitted changes (diff sha1 $(git diff HEAD -- crates/http | sha1sum | cut -c1-12))"
fi
[[ -r /proc/self/autogroup ]] && echo "scheduler group: $(cat /proc/self/autogroup)"
echo "load before: $(uptime)"

# One short discarded round, so the first measured run does not pay for
# cold page caches, lazy binding and the server's first allocations.
for mode in "${mode_list[@]}"; do
    "${client_pin[@]}" "$client_bin" "$url" "$(( files < 20000 ? files : 20000 ))" 8 "$mode" >/dev/null
done

results="$scratch/results"
: >"$results"
echo
echo '```'
for c in "${conn_list[@]}"; do
    for ((r = 0; r < runs; r++)); do
        for ((k = 0; k < ${#mode_list[@]}; k++)); do
            mode=${mode_list[$(( (k + r) % ${#mode_list[@]} ))]}
            line=$("${client_pin[@]}" "$client_bin" "$url" "$files" "$c" "$mode")
            echo "round=$r $line"
            # Keep the fields the table needs: C round mode files/s µs conns.
            awk -v c="$c" -v r="$r" '{
                for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                print c, r, f["mode"], f["files_per_s"], f["us_cpu_per_file"], f["conns_accepted"]
            }' <<<"$line" >>"$results"
        done
    done
done
echo '```'
echo "load after: $(uptime)"
echo

median() {
    sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2];
        else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# The ratios are medians of per-round ratios: each pooled run against the
# tasks run of the same round, which ran seconds apart under the same load.
echo "| C | mode | files/s | µs CPU/file | conns accepted | files/s ÷ tasks | µs CPU/file ÷ tasks |"
echo "|---:|---|---:|---:|---:|---:|---:|"
for c in "${conn_list[@]}"; do
    for mode in "${mode_list[@]}"; do
        sel() { awk -v c="$c" -v m="$mode" -v col="$1" '$1 == c && $3 == m { print $col }' "$results"; }
        fps=$(sel 4 | median)
        us=$(sel 5 | median)
        cn=$(sel 6 | median)
        if [[ $mode == tasks ]]; then
            rf="1"; ru="1"
        else
            ratio() {
                awk -v c="$c" -v m="$mode" -v col="$1" '
                    $1 == c && $3 == "tasks" { t[$2] = $col }
                    $1 == c && $3 == m { p[$2] = $col }
                    END { for (r in p) if (r in t && t[r] > 0) print p[r] / t[r] }' "$results" | median
            }
            rf=$(ratio 4); ru=$(ratio 5)
        fi
        printf '| %s | %s | %.0f | %.2f | %.0f | %s | %s |\n' "$c" "$mode" "$fps" "$us" "$cn" \
            "$(printf '%.3f' "$rf")" "$(printf '%.3f' "$ru")"
    done
done
