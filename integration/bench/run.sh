#!/usr/bin/env bash
# Run imapgate side by side with HAProxy and nginx (Debian's packages) on
# loopback: the proxies pinned to core 0, the load generator and the upstream
# to core 1. Usage: integration/bench/run.sh [imapbench flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v haproxy >/dev/null || ! [ -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    [ "$(id -u)" = 0 ] || { echo "install haproxy, nginx and libnginx-mod-stream (or run as root)"; exit 1; }
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy nginx libnginx-mod-stream util-linux >/dev/null
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
fi
bench=$(mktemp -d)/imapbench # a path of its own: another run may be building
go build -o "$bench" ./cmd/imapbench
exec taskset -c 1 "$bench" -core 0 "$@"
