#!/usr/bin/env bash
# Runs the whole test suite, after installing what the tests need that cargo
# does not bring: nginx (Debian's nginx-light), the reference server of the
# end-to-end test in tests/nginx.rs, and openssl for its certificate.
#
#   scripts/test.sh            # cargo test --workspace
#   scripts/test.sh -- NAME    # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
        echo "scripts/test.sh: WARNING: could not install ${missing[*]};" \
             "the nginx test will say it was skipped" >&2
    fi
fi

exec cargo test --workspace "$@"
