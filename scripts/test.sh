#!/usr/bin/env bash
# Runs the whole test suite, after installing what the tests need that cargo
# does not bring: nginx (Debian's nginx-light), the reference server of the
# end-to-end test in tests/nginx.rs, openssl for its certificate, and
# nats-server (Debian's package) for the cluster tests in tests/cluster.rs,
# which fail, saying so, without it.
#
#   scripts/test.sh            # cargo test --workspace
#   scripts/test.sh -- NAME    # extra arguments go to cargo test
#
# The end-to-end tests write hundreds of thousands of small files, and a
# 100-byte file takes a 4 KiB block on ext4: a few gigabytes at the peak.
# A CI machine once ran out of disk that way (ENOSPC, exit 7 in 30 tests),
# so the tests' scratch directories go to a memory file system when there is
# one with room (/dev/shm), and the script says where they went and how much
# room there was.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
        echo "scripts/test.sh: WARNING: could not install ${missing[*]};" \
             "the nginx test will say it was skipped, the cluster tests will fail" >&2
    fi
fi

# Free megabytes on the file system holding $1.
free_mb() { df -Pm "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }

# A scratch directory for the tests: /dev/shm when it has 4 GB free and lets
# programs run from it (one test copies the bulkget binary there and runs
# it), else the usual temporary directory.
scratch=""
if [ -d /dev/shm ] && [ "$(free_mb /dev/shm || echo 0)" -ge 4096 ]; then
    scratch=$(mktemp -d /dev/shm/bulkget-tests.XXXXXX)
    # mktemp makes it 0700; nginx (tests/nginx.rs), started as root, serves
    # from its workers as nobody, which must be able to pass through it to
    # the test's own directory, or every page is a 404.
    chmod 755 "$scratch"
    cp /bin/true "$scratch/probe" 2>/dev/null || true
    if ! "$scratch/probe" 2>/dev/null; then
        rm -rf "$scratch"
        scratch=""
    else
        rm -f "$scratch/probe"
    fi
fi
if [ -n "$scratch" ]; then
    trap 'rm -rf "$scratch"' EXIT
    export TMPDIR="$scratch"
fi
echo "scripts/test.sh: test scratch in ${TMPDIR:-/tmp} ($(free_mb "${TMPDIR:-/tmp}") MB free)," \
     "target in $(pwd)/target ($(free_mb .) MB free)" >&2
if [ "$(free_mb "${TMPDIR:-/tmp}")" -lt 2048 ]; then
    echo "scripts/test.sh: WARNING: under 2 GB free for the tests' files;" \
         "runs of 200,000 files may stop with exit 7 (out of space)" >&2
fi

cargo test --workspace "$@"
