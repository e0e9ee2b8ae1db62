#!/usr/bin/env bash
# setup.sh -- run Debian's real redis-server and redis-sentinel on loopback
# for imapgate's cluster tests (TestRealRedis…). Private directories under
# $DIR, loopback ports only, no persistence; the host's /etc/redis and any
# Redis service are never touched (the packages' own daemons stay off: .ci/run
# installs them under a policy-rc.d that forbids starting services).
#
# Instances, each with an ACL user "imapgate" (password in $DIR/env) and
# the default user disabled:
#   $PORT_MAIN (16379)     the shared Redis most tests use
#   $PORT_OUTAGE (16381)   one the outage test stops and starts
#   $PORT_A (16382), $PORT_B (16383)
#                          master and replica watched by one sentinel on
#                          $PORT_SENTINEL (26379), master name "imapgate"
#
#   setup.sh install          apt-get redis-server and redis-sentinel (services not started)
#   setup.sh start            start every instance and the sentinel
#   setup.sh stop             stop them all and remove $DIR
#   setup.sh stop-port PORT   stop one instance (a test's outage or failover)
#   setup.sh start-port PORT  start it again (as it was configured; after a
#                             failover, the sentinel makes it a replica)
#   setup.sh env             print the file the tests read
#
# The tests find Redis through IMAPGATE_REDIS=$DIR/env; .ci/run sets it.
set -euo pipefail

DIR=${IMAPGATE_REDIS_DIR:-/tmp/imapgate-redis}
PORT_MAIN=${IMAPGATE_REDIS_PORT:-16379}
PORT_OUTAGE=16381
PORT_A=16382
PORT_B=16383
PORT_SENTINEL=26379
USER=imapgate

say() { printf '[redis-setup] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

install_packages() {
    [ "$(id -u)" = 0 ] || die "install needs root"
    export DEBIAN_FRONTEND=noninteractive
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1
    fi
    if ! apt-cache policy redis-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -q; fi
    apt-get install -y -q -o DPkg::Lock::Timeout=300 redis-server redis-sentinel redis-tools >&2
    if [ -n "$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi
}

password() {
    if [ ! -f "$DIR/password" ]; then
        mkdir -p "$DIR"; chmod 700 "$DIR"
        head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DIR/password"
    fi
    cat "$DIR/password"
}

write_conf() { # port [replicaof-port]
    local port=$1 of=${2:-} pass conf acl
    # The shared instances get the rights the README asks for (imapgate's
    # keys and channel only, nothing dangerous but INFO, for imapbench);
    # the Sentinel pair's user also serves the sentinel and replication.
    acl="~{imapgate*}:* &{imapgate*}:* +@all -@dangerous +info"
    if [ -n "${SENTINEL_PAIR:-}" ]; then acl="~* &* +@all"; fi
    pass=$(password)
    conf="$DIR/$port/redis.conf"
    mkdir -p "$DIR/$port"
    [ -f "$conf" ] && return 0 # kept: after a failover the sentinel rewrote it
    cat >"$conf" <<CONF
bind 127.0.0.1
port $port
dir $DIR/$port
daemonize yes
pidfile $DIR/$port/redis.pid
logfile $DIR/$port/redis.log
save ""
appendonly no
protected-mode yes
user default off
user $USER on >$pass $acl
masteruser $USER
masterauth $pass
CONF
    if [ -n "$of" ]; then echo "replicaof 127.0.0.1 $of" >>"$conf"; fi
}

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        if redis-cli -p "$port" --user "$USER" --pass "$(password)" --no-auth-warning ping 2>/dev/null | grep -q PONG; then return 0; fi
        sleep 0.05
    done
    die "redis on $port did not answer"
}

start_port() {
    local port=$1
    [ -f "$DIR/$port/redis.conf" ] || die "no instance on $port (run start first)"
    if [ -f "$DIR/$port/redis.pid" ] && kill -0 "$(cat "$DIR/$port/redis.pid")" 2>/dev/null; then return 0; fi
    redis-server "$DIR/$port/redis.conf"
    wait_port "$port"
}

stop_port() {
    local port=$1 pid i
    [ -f "$DIR/$port/redis.pid" ] || return 0
    pid=$(cat "$DIR/$port/redis.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/$port/redis.pid"
}

start_sentinel() {
    local conf="$DIR/sentinel/sentinel.conf" pass
    pass=$(password)
    mkdir -p "$DIR/sentinel"
    if [ ! -f "$conf" ]; then
        cat >"$conf" <<CONF
bind 127.0.0.1
port $PORT_SENTINEL
dir $DIR/sentinel
daemonize yes
pidfile $DIR/sentinel/sentinel.pid
logfile $DIR/sentinel/sentinel.log
sentinel monitor imapgate 127.0.0.1 $PORT_A 1
sentinel auth-user imapgate $USER
sentinel auth-pass imapgate $pass
sentinel down-after-milliseconds imapgate 1000
sentinel failover-timeout imapgate 3000
sentinel parallel-syncs imapgate 1
CONF
    fi
    if [ -f "$DIR/sentinel/sentinel.pid" ] && kill -0 "$(cat "$DIR/sentinel/sentinel.pid")" 2>/dev/null; then return 0; fi
    redis-sentinel "$conf"
    local i
    for i in $(seq 1 100); do
        if redis-cli -p "$PORT_SENTINEL" ping 2>/dev/null | grep -q PONG; then return 0; fi
        sleep 0.05
    done
    die "sentinel did not answer"
}

write_env() {
    local pass
    pass=$(password)
    cat >"$DIR/env" <<ENV
REDIS_URL=redis://$USER:$pass@127.0.0.1:$PORT_MAIN
REDIS_OUTAGE_URL=redis://$USER:$pass@127.0.0.1:$PORT_OUTAGE
REDIS_OUTAGE_PORT=$PORT_OUTAGE
REDIS_SENTINEL_URL=redis://$USER:$pass@127.0.0.1:$PORT_SENTINEL?master_set=imapgate
REDIS_SENTINEL_PORT=$PORT_SENTINEL
REDIS_SENTINEL_PORTS=$PORT_A,$PORT_B
REDIS_SETUP=$(cd "$(dirname "$0")" && pwd)/setup.sh
REDIS_DIR=$DIR
ENV
    chmod 600 "$DIR/env"
}

case "${1:-}" in
install) install_packages ;;
start)
    command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null || die "redis-server and redis-sentinel missing (setup.sh install)"
    write_conf "$PORT_MAIN"; write_conf "$PORT_OUTAGE"
    SENTINEL_PAIR=1 write_conf "$PORT_A"; SENTINEL_PAIR=1 write_conf "$PORT_B" "$PORT_A"
    for p in "$PORT_MAIN" "$PORT_OUTAGE" "$PORT_A" "$PORT_B"; do start_port "$p"; done
    start_sentinel
    write_env
    say "redis on 127.0.0.1:$PORT_MAIN, $PORT_OUTAGE; master $PORT_A, replica $PORT_B, sentinel $PORT_SENTINEL; env in $DIR/env"
    ;;
stop)
    if [ -f "$DIR/sentinel/sentinel.pid" ]; then kill "$(cat "$DIR/sentinel/sentinel.pid")" 2>/dev/null || true; fi
    for p in "$PORT_MAIN" "$PORT_OUTAGE" "$PORT_A" "$PORT_B"; do stop_port "$p"; done
    rm -rf "$DIR"
    ;;
stop-port) stop_port "${2:?port}" ;;
start-port) start_port "${2:?port}" ;;
env) cat "$DIR/env" ;;
*) sed -n '2,27p' "$0"; exit 2 ;;
esac
