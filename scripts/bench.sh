#!/usr/bin/env bash
# bulkget benchmark harness (issue 6). Not a test: it measures and reports.
#
#   scripts/bench.sh [--quick] [--big] [--sizes "100000 1000000"] [--runs 3]
#                    [--big-runs 1] [--out-base DIR] [--no-pin] [--no-build]
#                    [--no-sweeps] [--no-profile] [--only LIST] [--nice N]
#                    [--slug WORD] [--doc FILE | --no-doc] [--baseline DIR]
#
# In one run, against one `bulkget-server` per configuration, it measures
#   1. the server's ceiling for GET /get/... with wrk (keep-alive, real names
#      file-{i:010} cycling through i < N, as many connections as the client);
#   2. the file-creation floor (crates/sink/examples/create_floor.rs): N files
#      of 100 bytes with openat/write/close, flat and fan-out;
#   3. `bulkget fetch` with --sink null, dir (flat and fanout) and sqlite;
#   4. sweeps of --connections, --batch-size and --window (null sink); the
#      protocols: plain HTTP/1.1 (unpipelined and pipelined), h2c (HTTP/2
#      with prior knowledge) at several --connections, and over TLS HTTP/1.1
#      and HTTP/2 by ALPN, in alternating rounds against two servers; the
#      CPU split pinned vs shared; the lister (standalone and inside a run);
#      --error-rate 0.2 vs clean (two servers side by side, runs alternating);
#   5. a perf profile of the whole process tree (null sink), if perf works;
#   6. with --baseline DIR: this build against an older `bulkget` binary,
#      clean and at --error-rate 0.2, alternating in every round;
#   7. reference servers and pipelining (block `refs`): nginx (Debian's
#      nginx-light, one worker) serving the same API from static files
#      beside bulkget-server, and bulkget-server --coalesce-pipelined (one
#      write for the answers to requests read together, where nginx and
#      the plain server write each answer on its own); against each, in the
#      same rounds: wrk without pipelining and pipelined at depths 4, 8 and
#      16 (scripts/wrk-names.lua; 4, 16 and 64 on the coalescing server),
#      h2load over h2c at 4 and 16 streams per connection, and
#      `bulkget fetch --sink null` at each of those `--pipeline` depths;
#      then the dir and sqlite sinks at 1, 4 and 16 (and the default's),
#      bulkget-server only;
#   8. latency (block `latency`): bulkget-server --latency-ms 1, 10 and 50,
#      files/s with the defaults (adaptive) against fixed --connections
#      (--adaptive off) at several counts, so "defaults ÷ best fixed" reads
#      off one table; throttling (block `throttle`): --rate-limit R, the
#      share of GETs answered 429 and the time against R's ideal (N / R),
#      with --adaptive on (the default) and off;
#   9. with block `cluster` (when nats-server is installed): against a
#      private nats-server (JetStream, store on /dev/shm), the names/s that
#      `bulkget cluster list` publishes with no host taking them, and the
#      CPU per file of a 2-host cluster run (hosts of 1 worker, null sink;
#      hosts, lister and nats-server counted) beside `fetch --sink null` in
#      the same rounds; the single-host lister's rate is block `lister`'s;
# and writes the run's Markdown page to a new file,
# docs/benchmarks/YYYY-MM-DD-HHMM-<slug>.md (UTC start time; never an
# existing file). docs/BENCHMARKS.md is the summary people read: it is
# edited by hand, not appended to. "Defaults" are read from this build's
# `bulkget fetch --help`.
#
# Options:
#   --quick          sizes 100000, 1 run, 3 s wrk, short sweeps (a smoke test)
#   --big            also N = 10^7 with the null and sqlite sinks (long)
#   --sizes "A B"    sizes for the main table (default "100000 1000000")
#   --runs R         runs per measurement; medians are reported (default 3)
#   --big-runs R     runs per measurement at 10^7 (default 1)
#   --out-base DIR   write dir/sqlite output under DIR (removed after each run)
#                    instead of a fresh scratch ext4 per run (see below)
#   --no-pin         do not split the CPUs between server and client
#   --no-build       use the binaries already in target/release
#   --only LIST      comma-separated subset of: main,sweeps,protocols,split,errors,lister,cluster,profile,refs,latency,throttle,baseline
#   --ref-size N     files for the refs block (default 200000; nginx serves them
#                    from a tree of small files on /dev/shm: ~4 KiB of RAM each)
#   --baseline DIR   DIR/bulkget is an older build (e.g. copied from
#                    target/release before a change); adds section 6 (also
#                    when --only leaves it out). Each binary runs at its own
#                    default window, read from its own --help.
#   --nice N         run server and client at this nice level (e.g. -10 while
#                    other jobs share the machine; default: unchanged), in a
#                    scheduler group of their own (scripts/lib/autogroup.sh)
#   --slug WORD      the <slug> of the page's file name (default: what ran,
#                    e.g. "full", "quick", "main-profile-big", "errors")
#   --doc FILE       write the page to FILE instead (appended if it exists)
#   --no-doc         print the page to stdout only
#
# CPU split. Server and client share this machine. By default the first half
# of the CPUs (taskset) runs bulkget-server with one runtime thread per CPU,
# and the other half runs the client under test: wrk, create_floor or
# `bulkget fetch --workers <CPUs in that half>` (coordinator and workers).
# On 2 CPUs: server on CPU 0 (--threads 1), client on CPU 1 (1 worker). So
# "× wrk ceiling" compares bulkget with wrk on the same core against the same
# server, and the client's CPU per file is what limits it.
#
# Output file system. By default (as root, with mkfs.ext4 and loop devices)
# every dir/sqlite run and every create_floor run gets a fresh, empty,
# journaled ext4 made in a sparse image under target/bench-scratch and
# loop-mounted: identical conditions for every run, and no slow `rm -rf` of
# millions of files between runs. With --out-base the runs go under DIR.
#
# Measurement method.
#   wall      the whole `bulkget fetch` process, from bash's EPOCHREALTIME
#   CPU       user+sys from /usr/bin/time: the coordinator plus every worker,
#             because the coordinator reaps its workers and wait4 reports a
#             process's own usage plus that of its reaped children
#   RSS       VmHWM of the coordinator and of each worker, sampled every 50 ms
#             by scripts/benchtool.py poll (VmHWM is the kernel's high-water
#             mark, so sampling never misses a peak, except growth in a
#             process's last 50 ms); /usr/bin/time's %M (the max over the
#             tree) is kept as a cross-check
#   lister    coordinator.json: lister_wait_ms (time the lister waited for room
#             = it was ahead) and shards[].idle_ms (time a shard had no batch)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ORIG_ARGS="$*"
ORIG_ARGV=("$@")

QUICK=0 BIG=0 RUNS=3 BIG_RUNS=1 SIZES="100000 1000000" OUT_BASE="" PIN=1 BUILD=1
DOC="" SLUG="" WRITE_DOC=1 ONLY_ALL="main,sweeps,protocols,split,errors,lister,cluster,profile,refs,latency,throttle"
ONLY=$ONLY_ALL SIZES_SET=0 RUNS_SET=0 NICE="" BASELINE="" REF_SIZE=200000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --big) BIG=1 ;;
    --sizes) SIZES="$2"; SIZES_SET=1; shift ;;
    --runs) RUNS="$2"; RUNS_SET=1; shift ;;
    --big-runs) BIG_RUNS="$2"; shift ;;
    --out-base) OUT_BASE="$2"; shift ;;
    --no-pin) PIN=0 ;;
    --no-build) BUILD=0 ;;
    --no-sweeps) ONLY=${ONLY//sweeps/} ;;
    --no-profile) ONLY=${ONLY//profile/} ;;
    --only) ONLY="$2"; shift ;;
    --ref-size) REF_SIZE="$2"; shift ;;
    --nice) NICE="$2"; shift ;;
    --baseline) BASELINE="$(cd "$2" && pwd)/bulkget"; shift ;;
    --slug) SLUG="$2"; shift ;;
    --doc) DOC="$2"; shift ;;
    --no-doc) WRITE_DOC=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
WRK_SECS=10
SWEEP_SIZE=1000000
if [[ $QUICK == 1 ]]; then
  [[ $SIZES_SET == 1 ]] || SIZES="100000"
  [[ $RUNS_SET == 1 ]] || RUNS=1
  WRK_SECS=3
  SWEEP_SIZE=100000
fi
want() { [[ ",$ONLY," == *",$1,"* ]]; }
# With --nice, run in a scheduler group of our own (see lib/autogroup.sh):
# plain nice does nothing against other sessions' builds under autogroups.
# shellcheck source=lib/autogroup.sh
. "$ROOT/scripts/lib/autogroup.sh"
own_autogroup "$NICE" "$ROOT/scripts/bench.sh" "${ORIG_ARGV[@]}"
if [[ -n $BASELINE ]]; then
  [[ -x $BASELINE ]] || { echo "bench.sh: --baseline: $BASELINE is not an executable" >&2; exit 2; }
  want baseline || ONLY="$ONLY,baseline"
fi
log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
# The run's start, read once: the page's date and its file name agree.
START_EPOCH=$(date -u +%s)

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
command -v python3 >/dev/null || need_pkgs+=(python3)
if want refs; then
  command -v nginx >/dev/null || need_pkgs+=(nginx-light)
  command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)
fi
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# ---------------------------------------------------------------- build
if [[ $BUILD == 1 ]]; then
  log "building release binaries"
  cargo build --release -q -p bulkget --bins
  cargo build --release -q -p bulkget-sink --example create_floor
  cargo build --release -q -p bulkget-server --example static_tree
fi
BULKGET="$ROOT/target/release/bulkget"
SERVER="$ROOT/target/release/bulkget-server"
FLOOR="$ROOT/target/release/examples/create_floor"
STATIC_TREE="$ROOT/target/release/examples/static_tree"
TOOL="$ROOT/scripts/benchtool.py"
WRK_LUA="$ROOT/scripts/wrk-names.lua"
for b in "$BULKGET" "$SERVER" "$FLOOR"; do [[ -x $b ]] || { echo "bench.sh: missing $b" >&2; exit 1; }; done

# ---------------------------------------------------------------- work area
WORK=$(mktemp -d /tmp/bulkget-bench.XXXXXX)
RESULTS="$WORK/results.tsv"
META="$WORK/meta"
: >"$RESULTS"
SERVER_PID=""
SCRATCH_DIR="$ROOT/target/bench-scratch"
SCRATCH_IMG="$SCRATCH_DIR/ext4.img"
SCRATCH_MNT="$SCRATCH_DIR/mnt"
USE_SCRATCH=0
if [[ -z $OUT_BASE ]]; then
  if [[ $(id -u) == 0 ]] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null && [[ -e /dev/loop-control ]]; then
    USE_SCRATCH=1
    mkdir -p "$SCRATCH_MNT"
  else
    OUT_BASE="$WORK/out"
  fi
fi
[[ -n $OUT_BASE ]] && mkdir -p "$OUT_BASE"
# The null sink writes only its state directory; on tmpfs its syncfs calls
# cost nothing, so other jobs' dirty data on a shared disk cannot show up in
# the engine's numbers.
NULL_BASE="$WORK"
if [[ -d /dev/shm && -w /dev/shm ]]; then NULL_BASE=$(mktemp -d /dev/shm/bulkget-bench.XXXXXX); fi

cleanup() {
  set +e
  stop_server
  stop_nginx
  [[ -n ${OTHER_SERVER_PID:-} ]] && kill "$OTHER_SERVER_PID" 2>/dev/null
  [[ $NULL_BASE == /dev/shm/* ]] && rm -rf "$NULL_BASE"
  if [[ $USE_SCRATCH == 1 ]]; then
    mountpoint -q "$SCRATCH_MNT" && umount "$SCRATCH_MNT"
    rm -f "$SCRATCH_IMG"
  fi
  log "raw results kept in $RESULTS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- CPU split
NPROC=$(nproc)
if [[ $PIN == 1 && $NPROC -ge 2 ]]; then
  half=$((NPROC / 2))
  SERVER_CPUS="0-$((half - 1))"
  CLIENT_CPUS="$half-$((NPROC - 1))"
  SERVER_THREADS=$half
  WORKERS=$((NPROC - half))
  SPLIT="server pinned to CPUs $SERVER_CPUS (--threads $SERVER_THREADS); client (wrk, create_floor, bulkget coordinator + $WORKERS worker(s)) pinned to CPUs $CLIENT_CPUS"
else
  SERVER_CPUS="0-$((NPROC - 1))"
  CLIENT_CPUS="$SERVER_CPUS"
  SERVER_THREADS=$NPROC
  WORKERS=$NPROC
  SPLIT="no pinning: server --threads $NPROC and $WORKERS workers share all $NPROC CPUs"
fi
# The defaults of this build of `bulkget fetch`, read from its --help, so
# "defaults" in the tables are the binary's own.
FETCH_HELP=$("$BULKGET" fetch --help)
default_of() { # OPTION FALLBACK [HELP TEXT]
  local v
  v=$(awk -v opt="$1 <" 'index($0, opt) { f = 1 } f && /\[default: [0-9]+\]/ {
        match($0, /\[default: [0-9]+\]/); print substr($0, RSTART + 10, RLENGTH - 11); exit }' <<<"${3:-$FETCH_HELP}")
  echo "${v:-$2}"
}
CONNS=$(default_of --connections 32)
BATCH=$(default_of --batch-size 256)
WINDOW=$(default_of --window 256)
PIPELINE=$(default_of --pipeline 1)
WRK_TAG=main
PINNED_SPLIT=("$SERVER_CPUS" "$CLIENT_CPUS" "$SERVER_THREADS" "$WORKERS")
# set_split pinned|shared: the CPU split used by start_server, client and run_*.
set_split() {
  if [[ $1 == shared ]]; then
    SERVER_CPUS="0-$((NPROC - 1))" CLIENT_CPUS="0-$((NPROC - 1))" SERVER_THREADS=$NPROC WORKERS=$NPROC
  else
    SERVER_CPUS=${PINNED_SPLIT[0]} CLIENT_CPUS=${PINNED_SPLIT[1]}
    SERVER_THREADS=${PINNED_SPLIT[2]} WORKERS=${PINNED_SPLIT[3]}
  fi
}
NICE_CMD=()
[[ -n $NICE ]] && NICE_CMD=(nice -n "$NICE")
client() { "${NICE_CMD[@]}" taskset -c "$CLIENT_CPUS" "$@"; }

# ---------------------------------------------------------------- server
start_server() { # N [server args...]
  local n=$1; shift
  stop_server
  rm -f "$WORK/server.out"
  "${NICE_CMD[@]}" taskset -c "$SERVER_CPUS" "$SERVER" --port 0 --files "$n" --threads "$SERVER_THREADS" "$@" \
    >"$WORK/server.out" 2>"$WORK/server.err" &
  SERVER_PID=$!
  local i
  URL=""
  for i in $(seq 200); do
    # `|| true`: the background shell may not have created server.out
    # yet, and under set -e -o pipefail head's failure would end the
    # whole bench silently.
    URL=$(head -1 "$WORK/server.out" 2>/dev/null | sed -n 's/^listening on //p' || true)
    [[ -n $URL ]] && break
    sleep 0.05
  done
  [[ -n $URL ]] || { echo "bench.sh: the server did not start" >&2; cat "$WORK/server.err" >&2; exit 1; }
}
stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}

# nginx, the outside reference: one worker process pinned like
# bulkget-server, serving the test server's dataset as static files
# (crates/server/examples/static_tree.rs) from /dev/shm, so neither side
# waits on a disk: GET /list answers pages/first, GET /list?next-marker=M
# answers pages/M, GET /get/NAME answers files/NAME. Everything else is
# nginx 1.22's defaults, keepalive_requests 1000 included: a pipelining
# client meets the keep-alive limit of a real server. URL is its HTTP/1.1
# address, H2_URL its h2c (prior knowledge) one, which alone allows more
# requests per connection (see below).
NGINX_DIR="" NGINX_PID=""
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_nginx() { # N
  local n=$1 port h2port i
  stop_nginx
  NGINX_DIR=$(mktemp -d /dev/shm/bulkget-bench-nginx.XXXXXX)
  # nginx's worker runs as an unprivileged user: it must read the tree.
  chmod 755 "$NGINX_DIR"
  "$STATIC_TREE" "$NGINX_DIR/tree" --files "$n" >&2
  mkdir -p "$NGINX_DIR/tmp"
  port=$(free_port) h2port=$(free_port)
  cat >"$NGINX_DIR/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $NGINX_DIR/tmp;
  proxy_temp_path $NGINX_DIR/tmp;
  fastcgi_temp_path $NGINX_DIR/tmp;
  uwsgi_temp_path $NGINX_DIR/tmp;
  scgi_temp_path $NGINX_DIR/tmp;
  default_type application/octet-stream;
  sendfile on;
  tcp_nodelay on;
  map \$args \$page { "" first; "~^next-marker=([0-9a-f]+)\$" \$1; default none; }
  server {
    listen 127.0.0.1:$port;
    root $NGINX_DIR/tree;
    location = /list { default_type application/json; try_files /pages/\$page =404; }
    location /get/ { alias $NGINX_DIR/tree/files/; }
  }
  # h2load does not reconnect after nginx's GOAWAY at keepalive_requests,
  # so over HTTP/2 it would measure 32 connections x 1,000 requests.
  server {
    listen 127.0.0.1:$h2port http2;
    keepalive_requests 1000000;
    root $NGINX_DIR/tree;
    location /get/ { alias $NGINX_DIR/tree/files/; }
  }
}
NGINX
  "${NICE_CMD[@]}" taskset -c "$SERVER_CPUS" nginx -c "$NGINX_DIR/nginx.conf" -p "$NGINX_DIR" \
    >"$NGINX_DIR/out" 2>&1 &
  NGINX_PID=$!
  URL="http://127.0.0.1:$port" H2_URL="http://127.0.0.1:$h2port"
  for i in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench.sh: nginx did not start" >&2; cat "$NGINX_DIR/error.log" "$NGINX_DIR/out" >&2; exit 1
}
stop_nginx() {
  if [[ -n $NGINX_PID ]]; then
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
  fi
  [[ -n $NGINX_DIR ]] && rm -rf "$NGINX_DIR"
  NGINX_DIR=""
}

# ---------------------------------------------------------------- output dirs
# fresh_out KIND N: prints an empty directory for a run's output.
fresh_out() {
  local kind=$1 n=$2
  if [[ $USE_SCRATCH == 1 ]]; then
    local per_file=5000 inodes=$((n + 100000))
    [[ $kind == sqlite ]] && { per_file=400; inodes=200000; }
    local gb=$(((n * per_file) / 1000000000 + 3))
    mountpoint -q "$SCRATCH_MNT" && umount "$SCRATCH_MNT"
    rm -f "$SCRATCH_IMG"
    truncate -s "${gb}G" "$SCRATCH_IMG"
    # The image is a new sparse file, so its inode tables already read as
    # zeros: lazy init and noinit_itable skip zeroing them (no background
    # ext4lazyinit I/O during the run).
    mkfs.ext4 -q -F -N "$inodes" -E lazy_itable_init=1,lazy_journal_init=1 "$SCRATCH_IMG"
    mount -o loop,noinit_itable "$SCRATCH_IMG" "$SCRATCH_MNT"
    echo "$SCRATCH_MNT/out"
  else
    local d="$OUT_BASE/out"
    rm -rf "$d"
    echo "$d"
  fi
}
drop_out() {
  local d=$1
  if [[ $USE_SCRATCH == 1 && $d == "$SCRATCH_MNT"/* ]]; then
    umount "$SCRATCH_MNT"
    rm -f "$SCRATCH_IMG"
  else
    rm -rf "$d"
  fi
}

# ---------------------------------------------------------------- measurements
note() { printf 'kind=note\ttext=%s\n' "$*" >>"$RESULTS"; log "note: $*"; }

run_wrk() { # N [DEPTH]
  local n=$1 depth=${2:-1} c=$((WORKERS * CONNS)) out
  out=$(client /usr/bin/time -o "$WORK/wrk.time" -f "TIME user=%U sys=%S" \
    env FILES="$n" WRK_THREADS="$WORKERS" DEPTH="$depth" wrk -t"$WORKERS" -c"$c" -d"${WRK_SECS}s" \
    -s "$WRK_LUA" "$URL" 2>&1)
  local line
  line=$(grep '^WRK_RESULT' <<<"$out" | head -1)
  [[ -n $line ]] || { echo "$out" >&2; echo "bench.sh: wrk failed" >&2; exit 1; }
  local rps secs errs bad reqs cpu
  rps=$(sed -n 's/.* rps=\([0-9]*\).*/\1/p' <<<"$line")
  secs=$(sed -n 's/.* secs=\([0-9.]*\).*/\1/p' <<<"$line")
  bad=$(sed -n 's/.* non2xx=\([0-9]*\).*/\1/p' <<<"$line")
  errs=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$line")
  reqs=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
  cpu=$(awk -v n="$reqs" '/^TIME/ { split($2,u,"="); split($3,s,"="); printf "%.2f", (u[2]+s[2])/n*1e6 }' "$WORK/wrk.time")
  printf 'kind=wrk\ttag=%s\tsize=%s\tconns=%s\tthreads=%s\tdepth=%s\trps=%s\tsecs=%s\tcpu_us=%s\tnon2xx=%s\terrors=%s\n' \
    "$WRK_TAG" "$n" "$c" "$WORKERS" "$depth" "$rps" "$secs" "$cpu" "$bad" "$errs" >>"$RESULTS"
  log "wrk N=$n c=$c depth=$depth: $rps req/s, $cpu µs CPU/request (non-2xx $bad, socket errors $errs)"
}

# h2load over h2c (HTTP/2 with prior knowledge, no TLS): as many connections
# as wrk, STREAMS requests in flight on each, cycling through the real
# names. No row if the server does not speak h2c.
run_h2load() { # N STREAMS H2_URL
  local n=$1 streams=$2 url=$3 c=$((WORKERS * CONNS)) out
  # h2load takes the scheme and authority from the first URI and a path
  # from each line after it.
  { echo "$url/get/file-0000000000"
    python3 -c "import sys
for i in range($n): print(f'/get/file-{i:010d}')"; } >"$WORK/h2-uris"
  out=$(client /usr/bin/time -o "$WORK/h2load.time" -f "TIME user=%U sys=%S" \
    h2load -t "$WORKERS" -c "$c" -m "$streams" -D "$WRK_SECS" -i "$WORK/h2-uris" 2>&1) || true
  local reqs ok secs rps cpu
  reqs=$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' <<<"$out")
  ok=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  secs=$(sed -n 's/^finished in \([0-9.]*\)s, .*/\1/p' <<<"$out")
  if [[ -z $ok || $ok == 0 || -z $secs ]]; then
    note "h2load c=$c m=$streams against $url: no successful requests ($(tail -2 <<<"$out" | tr '\n' ' '))"
    return 0
  fi
  rps=$(awk -v n="$ok" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
  cpu=$(awk -v n="$ok" '/^TIME/ { split($2,u,"="); split($3,s,"="); printf "%.2f", (u[2]+s[2])/n*1e6 }' "$WORK/h2load.time")
  printf 'kind=h2load\ttag=%s\tsize=%s\tconns=%s\tthreads=%s\tstreams=%s\trps=%s\tsecs=%s\tcpu_us=%s\trequests=%s\tok=%s\n' \
    "$WRK_TAG" "$n" "$c" "$WORKERS" "$streams" "$rps" "$secs" "$cpu" "$reqs" "$ok" >>"$RESULTS"
  log "h2load N=$n c=$c m=$streams: $rps req/s, $cpu µs CPU/request"
}

run_floor() { # N LAYOUT(flat|fanout|flat-openat2)
  local n=$1 layout=$2 dir flags=() line
  case $layout in
    fanout) flags=(--fanout) ;;
    flat-openat2) flags=(--openat2) ;;
  esac
  dir=$(fresh_out floor "$n")
  line=$(client /usr/bin/time -o "$WORK/floor.time" -f "TIME user=%U sys=%S" \
    "$FLOOR" "${flags[@]}" --sync --threads "$WORKERS" "$n" "$dir")
  local secs cpu sync
  secs=$(sed -n 's/.* secs=\([0-9.]*\) .*/\1/p' <<<"$line")
  sync=$(sed -n 's/.* sync_secs=\([0-9.]*\).*/\1/p' <<<"$line")
  cpu=$(awk -v n="$n" '/^TIME/ { split($2,u,"="); split($3,s,"="); printf "%.2f", (u[2]+s[2])/n*1e6 }' "$WORK/floor.time")
  printf 'kind=floor\tsize=%s\tlayout=%s\tsecs=%s\tsync_secs=%s\tcpu_us=%s\n' "$n" "$layout" "$secs" "$sync" "$cpu" >>"$RESULTS"
  log "create_floor N=$n $layout: $line (cpu $cpu µs/file)"
  drop_out "$dir"
}

# run_fetch TAG N SINK LAYOUT CONNS BATCH WINDOW ERR PAGE [extra fetch args]
run_fetch() {
  local tag=$1 n=$2 sink=$3 layout=$4 conns=$5 batch=$6 window=$7 err=$8 page=$9
  shift 9
  local out args=()
  if [[ $sink == null ]]; then
    out="$NULL_BASE/null-out"; rm -rf "$out"
  else
    out=$(fresh_out "$sink" "$n")
  fi
  [[ $sink == dir ]] && args+=(--layout "$layout")
  # PIPE=D (environment) runs at --pipeline D; otherwise the binary's
  # default, which the row records either way.
  local pipe=${PIPE:-$PIPELINE}
  [[ -n ${PIPE:-} ]] && args+=(--pipeline "$PIPE")
  local t0 t1 pid poller rc=0
  t0=$EPOCHREALTIME
  client /usr/bin/time -o "$WORK/fetch.time" -f "TIME user=%U sys=%S maxrss=%M exit=%x" \
    "${FETCH_BIN:-$BULKGET}" fetch "$URL" "$out" --sink "$sink" "${args[@]}" --workers "$WORKERS" \
    --connections "$conns" --batch-size "$batch" --window "$window" --progress none "$@" \
    >"$WORK/fetch.log" 2>&1 &
  pid=$!
  python3 "$TOOL" poll "$pid" "$WORK/poll.json" &
  poller=$!
  wait "$pid" || rc=$?
  t1=$EPOCHREALTIME
  wait "$poller" || true
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  # ROW_EXTRA="k=v ..." (environment) adds fields to the row; STATS_URL
  # adds the server's GET and 429 counts (reset by a fresh server per run).
  # shellcheck disable=SC2086
  python3 "$TOOL" fetchrow kind=fetch tag="$tag" size="$n" sink="$sink" layout="$layout" \
    conns="$conns" batch="$batch" window="$window" workers="$WORKERS" err="$err" page="$page" \
    pipeline="$pipe" ${ROW_EXTRA:-} -- "$WORK/fetch.time" "$WORK/poll.json" "$out/.bulkget" "$wall" >>"$RESULTS"
  local row
  row=$(tail -1 "$RESULTS")
  log "fetch [$tag] N=$n sink=$sink${args[*]:+ ${args[*]}} c=$conns b=$batch w=$window err=$err page=$page: wall ${wall}s ($(awk -v n="$n" -v w="$wall" 'BEGIN{printf "%.0f", n/w}') files/s) rc=$rc"
  if [[ $rc != 0 ]] || ! grep -q "files_ok=$n	" <<<"$row"; then
    note "run not complete (exit $rc): $tag N=$n sink=$sink layout=$layout; log: $(tail -3 "$WORK/fetch.log" | tr '\n\t' '  ')"
  fi
  if [[ $sink == null ]]; then rm -rf "$out"; else drop_out "$out"; fi
}

# ---------------------------------------------------------------- meta
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
: >"$META"
meta date "$(date -u -d "@$START_EPOCH" '+%Y-%m-%d %H:%M UTC')"
meta command "scripts/bench.sh $ORIG_ARGS"
meta nproc "$NPROC"
meta cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
meta ram "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
meta kernel "$(uname -r)"
if [[ $USE_SCRATCH == 1 ]]; then
  meta out_fs "fresh ext4 per run (mkfs.ext4 defaults + -N, journaled, 4 KiB blocks) on a loop device; image on $(findmnt -no FSTYPE,SOURCE -T "$SCRATCH_DIR" | tr -s ' ')"
else
  meta out_fs "$(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$OUT_BASE" | tr -s ' ') ($OUT_BASE)"
fi
meta split "$SPLIT; $CONNS connections per worker, batch $BATCH, window $WINDOW, pipeline $PIPELINE (this build's defaults) unless varied"
meta load_before "$(cut -d' ' -f1-3 /proc/loadavg)"
meta null_out "${NULL_BASE%/*} ($(findmnt -no FSTYPE -T "$NULL_BASE")) for --sink null runs"
[[ -n $NICE ]] && meta nice "server and client ran under nice -n $NICE"
meta git "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
meta pipeline_default "$PIPELINE"
log "$SPLIT"

# ---------------------------------------------------------------- 1-3: the main table
if want main; then
  for n in $SIZES; do
    start_server "$n"
    [[ $n == "${SIZES%% *}" ]] && run_floor "$n" flat-openat2
    # Interleaved, so that a burst of load from elsewhere hits every case of
    # one round rather than every run of one case.
    for r in $(seq "$RUNS"); do
      run_wrk "$n"
      run_floor "$n" flat
      run_floor "$n" fanout
      run_fetch main "$n" null - $CONNS $BATCH $WINDOW 0 1000
      run_fetch main "$n" dir flat $CONNS $BATCH $WINDOW 0 1000
      run_fetch main "$n" dir fanout $CONNS $BATCH $WINDOW 0 1000
      run_fetch main "$n" sqlite - $CONNS $BATCH $WINDOW 0 1000
    done
    stop_server
  done
  if [[ $BIG == 1 ]]; then
    n=10000000
    start_server "$n"
    for r in $(seq "$BIG_RUNS"); do
      run_wrk "$n"
      run_fetch main "$n" null - $CONNS $BATCH $WINDOW 0 1000
      run_fetch main "$n" sqlite - $CONNS $BATCH $WINDOW 0 1000
    done
    stop_server
  else
    note "10^7 files not run (pass --big): null and sqlite at 10^7 take several minutes each here"
  fi
fi

# ---------------------------------------------------------------- 4: sweeps
if want sweeps; then
  n=$SWEEP_SIZE
  WRK_TAG=sweeps
  start_server "$n"
  for r in $(seq "$RUNS"); do
    run_wrk "$n" 1
    # Pipelined wrk: what the per-request round trip costs (see the doc).
    run_wrk "$n" 4
    run_wrk "$n" 16
  done
  for r in $(seq "$RUNS"); do
    for c in 4 16 32 64 128; do run_fetch conns "$n" null - "$c" $BATCH $WINDOW 0 1000; done
    for b in 64 256 1024; do run_fetch batch "$n" null - $CONNS "$b" $WINDOW 0 1000; done
    for w in 1 4 32 256; do run_fetch window "$n" null - $CONNS $BATCH "$w" 0 1000; done
  done
  stop_server
fi

# keep_server: the running server stays up (as OTHER) while start_server
# starts another; URL_OTHER is its URL.
keep_server() {
  OTHER_SERVER_PID=$SERVER_PID URL_OTHER=$URL
  SERVER_PID=""
}
drop_other_server() {
  kill "$OTHER_SERVER_PID" 2>/dev/null || true
  wait "$OTHER_SERVER_PID" 2>/dev/null || true
  OTHER_SERVER_PID=""
}

if want protocols; then
  # The protocols, same dataset, rounds alternating, null sink:
  #   http1      plain HTTP/1.1 unpipelined (--pipeline 1): the base row;
  #   http1-pipe plain HTTP/1.1 at the default --pipeline;
  #   h2c        HTTP/2 with prior knowledge (32 streams per connection)
  #              at several --connections (concurrent streams over HTTP/2);
  #   https1     TLS, --http-version 1.1 (ALPN offers http/1.1 only);
  #   https-h2   TLS with the defaults: ALPN offers h2 and the server
  #              takes it.
  # Two servers, plain and TLS (--tls, its CA written to a file).
  n=$SWEEP_SIZE
  start_server "$n" --tls --cert-out "$WORK/ca.pem"; keep_server; URL_TLS=$URL_OTHER
  start_server "$n"; URL_PLAIN=$URL
  for r in $(seq "$RUNS"); do
    URL=$URL_PLAIN
    PIPE=1 run_fetch proto-http1 "$n" null - $CONNS $BATCH $WINDOW 0 1000 --http-version 1.1
    run_fetch proto-http1-pipe "$n" null - $CONNS $BATCH $WINDOW 0 1000 --http-version 1.1
    for c in 32 64 128; do
      run_fetch proto-h2c "$n" null - "$c" $BATCH $WINDOW 0 1000 --http-version 2
    done
    URL=$URL_TLS
    run_fetch proto-https1 "$n" null - $CONNS $BATCH $WINDOW 0 1000 --http-version 1.1 --cacert "$WORK/ca.pem"
    run_fetch proto-https-h2 "$n" null - $CONNS $BATCH $WINDOW 0 1000 --cacert "$WORK/ca.pem"
  done
  URL=$URL_PLAIN
  stop_server; drop_other_server
fi

if want split && [[ $PIN == 1 && $NPROC -ge 2 ]]; then
  # The same null-sink run and wrk, pinned (the default split) and with
  # server and client sharing every CPU, in alternating rounds.
  n=$SWEEP_SIZE
  set_split shared; start_server "$n"; keep_server; URL_SHARED=$URL_OTHER
  set_split pinned; start_server "$n"; URL_PINNED=$URL
  for r in $(seq "$RUNS"); do
    for split in pinned shared; do
      set_split "$split"; WRK_TAG="split-$split"
      if [[ $split == shared ]]; then URL=$URL_SHARED; else URL=$URL_PINNED; fi
      run_wrk "$n"
      run_fetch "split-$split" "$n" null - $CONNS $BATCH $WINDOW 0 1000
    done
  done
  set_split pinned; URL=$URL_PINNED; WRK_TAG=main
  stop_server; drop_other_server
fi

# ---------------------------------------------------------------- 8: latency and throttling
# A fresh server per run, so its counters are the run's own. Sizes are
# small enough for a 2-core machine; the default's in-flight limit starts
# at 16 and doubles per round trip, which the larger latencies make visible.
if want latency; then
  for lat in 1 10 50; do
    n=20000
    [[ $lat == 50 ]] && n=5000
    [[ $QUICK == 1 ]] && n=$((n / 4))
    for r in $(seq "$RUNS"); do
      start_server "$n" --latency-ms "$lat"
      ROW_EXTRA="latency=$lat mode=default" STATS_URL=$URL run_fetch latency "$n" null - "$CONNS" $BATCH $WINDOW 0 1000
      # The default's --connections too: the most the defaults may open.
      for c in $(printf '%s\n' 32 128 "$CONNS" 512 | sort -un); do
        start_server "$n" --latency-ms "$lat"
        ROW_EXTRA="latency=$lat mode=fixed" STATS_URL=$URL run_fetch latency "$n" null - "$c" $BATCH $WINDOW 0 1000 --adaptive off
      done
    done
    stop_server
  done
fi

if want throttle; then
  n=50000 rate=4000
  [[ $QUICK == 1 ]] && n=20000
  for r in $(seq "$RUNS"); do
    for adaptive in on off; do
      start_server "$n" --rate-limit "$rate"
      ROW_EXTRA="rate_limit=$rate adaptive=$adaptive" STATS_URL=$URL run_fetch throttle "$n" null - "$CONNS" $BATCH $WINDOW 0 1000 --adaptive "$adaptive"
    done
  done
  stop_server
fi

if want errors; then
  # With --error-rate 0.2 a quarter of the failing names (5 % of all) get
  # 503 + Retry-After: 1, so no run can end sooner than ~1 s after its last
  # batch; at 10^5 files (~1 s clean) that alone caps the ratio near 0.5, so
  # the windows are also measured at $SWEEP_SIZE files. Before stall
  # reports (2026-11-21) window 4 ran at ~1,000 files/s here; since, a
  # batch waiting on Retry-After leaves the window and the window hardly
  # matters.
  # Two servers (clean and faulty) run at once, so clean and faulty runs
  # alternate in rounds and share the outside load.
  for n in $(printf '%s\n' 100000 "$SWEEP_SIZE" | sort -un); do
    start_server "$n" --error-rate 0.2; keep_server; URL_ERR=$URL_OTHER
    start_server "$n"; URL_CLEAN=$URL
    windows="4 16 256"
    for r in $(seq "$RUNS"); do
      URL=$URL_CLEAN; run_fetch errors "$n" null - $CONNS $BATCH $WINDOW 0 1000
      URL=$URL_ERR
      for w in $windows; do run_fetch errors "$n" null - $CONNS $BATCH "$w" 0.2 1000; done
    done
    stop_server; drop_other_server
  done
fi

if want baseline && [[ -n $BASELINE ]]; then
  # Before/after in one run: this build ("new") and the --baseline binary
  # ("old") fetch from the same two servers (clean, and --error-rate 0.2),
  # one after the other in every round, so both see the same outside load.
  # Each runs at its own default window: the defaults are part of a change.
  n=$SWEEP_SIZE
  OLD_WINDOW=$(default_of --window 256 "$("$BASELINE" fetch --help)")
  meta baseline "$BASELINE ($("$BASELINE" --version 2>/dev/null || echo '?'); default window $OLD_WINDOW)"
  start_server "$n" --error-rate 0.2; keep_server; URL_ERR=$URL_OTHER
  start_server "$n"; URL_CLEAN=$URL
  WRK_TAG=baseline
  for r in $(seq "$RUNS"); do
    URL=$URL_CLEAN; run_wrk "$n"
    for err in 0 0.2; do
      if [[ $err == 0 ]]; then URL=$URL_CLEAN; else URL=$URL_ERR; fi
      run_fetch baseline-new "$n" null - $CONNS $BATCH $WINDOW "$err" 1000
      FETCH_BIN=$BASELINE run_fetch baseline-old "$n" null - $CONNS $BATCH "$OLD_WINDOW" "$err" 1000
    done
  done
  stop_server; drop_other_server; WRK_TAG=main
fi

if want lister; then
  n=$SWEEP_SIZE
  for page in 100 1000 10000; do
    start_server "$n" --page-size "$page"
    for r in $(seq "$RUNS"); do
      line=$(taskset -c "$CLIENT_CPUS" python3 "$TOOL" list "$URL")
      printf 'kind=list\tsize=%s\tpage=%s\t%s\n' "$n" "$page" "$(sed 's/^LIST //; s/ /\t/g' <<<"$line")" >>"$RESULTS"
      log "list N=$n page=$page: $line"
      run_fetch lister "$n" null - $CONNS $BATCH $WINDOW 0 "$page"
    done
    stop_server
  done
fi

# ---------------------------------------------------------------- 9: cluster
# CPU seconds (user + system) a live process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# CPU seconds from a /usr/bin/time -f "%U %S" file.
time_cpu() { awk '{ printf "%.3f", $1 + $2 }' "$1"; }
if want cluster; then
  NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [[ ! -x $NATS_BIN ]]; then
    note "nats-server is not installed: no cluster block (apt-get install nats-server)"
  else
    n=$SWEEP_SIZE
    start_server "$n"
    for r in $(seq "$RUNS"); do
      nats_dir=$(mktemp -d "$NULL_BASE/nats.XXXXXX")
      nats_port=$(free_port)
      NATS_URL_B="nats://127.0.0.1:$nats_port"
      taskset -c "$SERVER_CPUS" "$NATS_BIN" -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_dir" >"$WORK/nats.log" 2>&1 &
      nats_pid=$!
      for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
      # The lister alone: every batch published, no host taking them.
      # taskset execs the lister, so $! is the lister itself.
      c0=$(cpu_of "$nats_pid") t0=$EPOCHREALTIME
      "${NICE_CMD[@]}" taskset -c "$CLIENT_CPUS" "$BULKGET" cluster list "$URL" --nats "$NATS_URL_B" \
        --job "bench-list-$r" --max-queued 100000000 --quiet >"$WORK/list.log" 2>&1 &
      lpid=$!
      # It waits for hosts once everything is published: stop it when the
      # consumer holds every batch.
      want_batches=$(( (n + 999) / 1000 )) q=0 give_up=$((SECONDS + 120))
      while [[ $SECONDS -lt $give_up ]]; do
        q=$("$BULKGET" cluster status --nats "$NATS_URL_B" --job "bench-list-$r" --json 2>/dev/null \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["batches_queued"])' 2>/dev/null || echo 0)
        [[ $q -ge $want_batches ]] && break
        sleep 0.05
      done
      [[ $q -ge $want_batches ]] || note "cluster list: only $q of $want_batches batches queued after 120 s"
      t1=$EPOCHREALTIME c1=$(cpu_of "$nats_pid") lcpu=$(cpu_of "$lpid")
      kill "$lpid" 2>/dev/null; wait "$lpid" 2>/dev/null || true
      printf 'kind=cluster\tphase=list\tsize=%s\twall=%s\tnats_cpu=%s\tlister_cpu=%s\n' "$n" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')" "$lcpu" >>"$RESULTS"
      log "cluster list N=$n: $(tail -1 "$RESULTS")"
      # A 2-host run: hosts of 1 worker each, null sink.
      c0=$(cpu_of "$nats_pid") t0=$EPOCHREALTIME
      client /usr/bin/time -o "$WORK/clist.time" -f "%U %S" "$BULKGET" cluster list "$URL" --nats "$NATS_URL_B" \
        --job "bench-run-$r" --quiet >"$WORK/clist.log" 2>&1 &
      lpid=$!
      hpids=()
      for h in 1 2; do
        client /usr/bin/time -o "$WORK/host$h.time" -f "%U %S" "$BULKGET" cluster work "$URL" "$NULL_BASE/host$h" \
          --nats "$NATS_URL_B" --job "bench-run-$r" --workers 1 --sink null --progress none --quiet \
          >"$WORK/host$h.log" 2>&1 &
        hpids+=($!)
      done
      rc=0
      wait "$lpid" || rc=$?
      for p in "${hpids[@]}"; do wait "$p" || rc=$?; done
      t1=$EPOCHREALTIME c1=$(cpu_of "$nats_pid")
      printf 'kind=cluster\tphase=run\tsize=%s\twall=%s\tnats_cpu=%s\tlister_cpu=%s\thosts_cpu=%s\trc=%s\n' "$n" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')" "$(time_cpu "$WORK/clist.time")" \
        "$(awk '{ s += $1 + $2 } END { printf "%.3f", s }' "$WORK/host1.time" "$WORK/host2.time")" "$rc" >>"$RESULTS"
      log "cluster run N=$n: $(tail -1 "$RESULTS")"
      [[ $rc == 0 ]] || note "cluster run not complete (exit $rc): $(tail -2 "$WORK/clist.log" | tr '\n\t' '  ')"
      rm -rf "$NULL_BASE/host1" "$NULL_BASE/host2"
      kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
      rm -rf "$nats_dir"
      # fetch in the same round, same server, same sink.
      run_fetch cluster-ref "$n" null - $CONNS $BATCH $WINDOW 0 1000
    done
    stop_server
  fi
fi

# ---------------------------------------------------------------- 7: refs
if want refs; then
  # The same rounds against each server: wrk at depth 1 and pipelined,
  # h2load at 4 and 16 streams, bulkget at the same --pipeline depths (null
  # sink). Each ratio is against wrk at depth 1 on the same server in the
  # same round. The coalescing server answers so fast that 200,000 files
  # are mostly bulkget's start-up and listing: it serves five times as many.
  for ref in bulkget-server coalescing nginx; do
    n=$REF_SIZE
    depths="1 4 8 16"
    if [[ $ref == nginx ]]; then
      command -v nginx >/dev/null || { note "nginx is not installed: no nginx reference"; continue; }
      start_nginx "$n"
    elif [[ $ref == coalescing ]]; then
      n=$((REF_SIZE * 5)) depths="1 4 16 64"
      start_server "$n" --coalesce-pipelined; H2_URL=$URL
    else
      start_server "$n"; H2_URL=$URL
    fi
    WRK_TAG="ref-$ref"
    for r in $(seq "$RUNS"); do
      for d in $depths; do run_wrk "$n" "$d"; done
      if command -v h2load >/dev/null; then
        for m in 4 16; do run_h2load "$n" "$m" "$H2_URL"; done
      fi
      for d in $depths; do PIPE=$d run_fetch "ref-$ref" "$n" null - $CONNS $BATCH $WINDOW 0 1000; done
    done
    if [[ $ref == nginx ]]; then stop_nginx; else stop_server; fi
  done
  # The sinks with and without pipelining: what the protocol saves when the
  # file system's work is added (bulkget-server, as the main table).
  n=$REF_SIZE
  start_server "$n"
  WRK_TAG="ref-sinks"
  for r in $(seq "$RUNS"); do
    run_wrk "$n" 1
    for d in $(printf '%s\n' 1 4 16 "$PIPELINE" | sort -un); do
      PIPE=$d run_fetch ref-sinks "$n" dir flat $CONNS $BATCH $WINDOW 0 1000
      PIPE=$d run_fetch ref-sinks "$n" sqlite - $CONNS $BATCH $WINDOW 0 1000
    done
  done
  stop_server
  WRK_TAG=main
fi

# ---------------------------------------------------------------- 5: profile
PROFILE_TXT=""
if want profile; then
  if perf record -o "$WORK/probe.data" -e cpu-clock true >/dev/null 2>&1; then
    n=$SWEEP_SIZE
    start_server "$n"
    out="$NULL_BASE/prof-out"; rm -rf "$out"
    client perf record -q -e cpu-clock -F 4999 -o "$WORK/perf.data" -- \
      "$BULKGET" fetch "$URL" "$out" --sink null --workers "$WORKERS" --progress none \
      >"$WORK/prof.log" 2>&1 || true
    stop_server
    PROFILE_TXT="$WORK/profile.txt"
    {
      echo "\`perf record -e cpu-clock -F 4999\` of \`bulkget fetch --sink null\` (coordinator and workers, N=$n)."
      echo
      python3 "$TOOL" profile "$WORK/perf.data" "$out/.bulkget" "$n"
    } >"$PROFILE_TXT"
    rm -rf "$out"
    log "profile written to $PROFILE_TXT"
  else
    note "perf record does not work here; no profile"
  fi
fi

# ---------------------------------------------------------------- report
meta load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
SECTION="$WORK/section.md"
python3 "$TOOL" report "$RESULTS" "$META" >"$SECTION"
if [[ -n $PROFILE_TXT ]]; then
  { echo "## Profile"; echo; cat "$PROFILE_TXT"; echo; } >>"$SECTION"
fi
{
  echo "<details><summary>Raw results of this run</summary>"
  echo
  echo '```text'
  cat "$RESULTS"
  echo '```'
  echo
  echo "</details>"
} >>"$SECTION"
if [[ $WRITE_DOC == 1 && -n $DOC ]]; then
  mkdir -p "$(dirname "$DOC")"
  [[ -s $DOC ]] && printf '\n' >>"$DOC"
  cat "$SECTION" >>"$DOC"
  log "wrote the results to $DOC"
elif [[ $WRITE_DOC == 1 ]]; then
  # The slug says what ran, so the index of docs/benchmarks/ reads as a list.
  if [[ -z $SLUG ]]; then
    if [[ $QUICK == 1 ]]; then
      SLUG=quick
    elif [[ $ONLY == "$ONLY_ALL" || $ONLY == "$ONLY_ALL,baseline" ]]; then
      SLUG=full
    else
      SLUG=$(tr -s ',' '-' <<<"$ONLY" | sed 's/^-//; s/-$//')
    fi
    [[ -n $BASELINE && $SLUG != *baseline* ]] && SLUG="$SLUG-baseline"
    [[ $BIG == 1 ]] && want main && SLUG="$SLUG-big"
  fi
  base="$ROOT/docs/benchmarks/$(date -u -d "@$START_EPOCH" +%Y-%m-%d-%H%M)-$SLUG"
  DOC="$base.md" i=2
  while [[ -e $DOC ]]; do DOC="$base-$i.md" i=$((i + 1)); done
  mkdir -p "$(dirname "$DOC")"
  cat "$SECTION" >"$DOC"
  log "wrote the results to $DOC; add it to the index in docs/benchmarks/README.md"
else
  cat "$SECTION"
fi
