#!/usr/bin/env bash
# setup.sh -- run Debian's real redis-server and redis-sentinel on loopback
# for imapgate's cluster tests (TestRealRedis…). Private directories under
# $DIR, loopback ports only, no persistence; the host's /etc/redis and any
# Redis service are never touched (the packages' own daemons stay off: .ci/run
# installs them under a policy-rc.d that forbids starting services).
#
# Instances, each with an ACL user "imapgate" (password in $DIR/env) and
# the default user disabled:
#   $PORT_MAIN (16379)     the shared Redis most tests use (and a user
#                          "setup" with every right, $REDIS_ADMIN_URL, for
#                          tests that make ACL users of their own); also on
#                          the unix socket $DIR/$PORT_MAIN/redis.sock
#                          ($REDIS_UNIX_URL)
#   $PORT_OUTAGE (16381)   one the outage test stops and starts
#   $PORT_TICKETS (16384)  one the ticket-rotation outage test stops and starts
#   $PORT_A (16382), $PORT_B (16383)
#                          master and replica watched by one sentinel on
#                          $PORT_SENTINEL (26379), master name "imapgate";
#                          the sentinel requires its own ACL user
#                          "sentinel" (password in $DIR/env)
#   $CLUSTER_PORTS (16391, 16392, 16393), $CLUSTER_REPLICA_PORTS (16394,
#   16395, 16396)
#                          a Redis Cluster of three masters, each with one
#                          replica (created with the masters on the first
#                          three; a failover test may switch a pair and
#                          switches it back); a user "setup" with every
#                          right, for redis-cli --cluster create, CLUSTER
#                          FAILOVER and replication, besides "imapgate".
#                          A cluster of another layout (an older setup.sh's
#                          three masters without replicas) is made anew.
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
PORT_TICKETS=16384
PORT_SENTINEL=26379
CLUSTER_PORTS="16391 16392 16393"
CLUSTER_REPLICA_PORTS="16394 16395 16396"
USER=imapgate
SENTINEL_USER=sentinel

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

password() { # [name]: the imapgate user's, or another user's
    local f="$DIR/${1:-password}"
    if [ ! -f "$f" ]; then
        mkdir -p "$DIR"; chmod 700 "$DIR"
        head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f"
    fi
    cat "$f"
}

# write_conf writes an instance's redis.conf. The Sentinel pair's is kept
# once written (after a failover the sentinel rewrote it); any other that
# an older setup.sh wrote differently is replaced, and the instance, if
# running, stopped so that start runs it with the new one.
write_conf() { # port [replicaof-port]
    local port=$1 of=${2:-} pass conf acl
    # Every instance gives imapgate the rights the README asks for
    # (imapgate's keys and channel only, nothing dangerous but INFO, for
    # imapbench, and ROLE, which Sentinel mode asks the master). Replication
    # and the sentinel use users of their own.
    acl="~{imapgate*}:* &{imapgate*}:* +@all -@dangerous +info +role"
    pass=$(password)
    conf="$DIR/$port/redis.conf"
    mkdir -p "$DIR/$port"
    # The Sentinel pair's is kept once written, unless an older setup.sh
    # wrote it (its imapgate user served replication too).
    if [ -f "$conf" ] && [ -n "${SENTINEL_PAIR:-}" ]; then
        if grep -q '^user replication ' "$conf"; then return 0; fi
        say "$port: configuration of an older setup.sh, replaced"
        stop_port "$port"
    fi
    conf_text "$port" "$of" "$pass" "$acl" >"$conf.new"
    if [ -f "$conf" ] && cmp -s "$conf" "$conf.new"; then rm -f "$conf.new"; return 0; fi
    if [ -f "$conf" ]; then say "$port: configuration of an older setup.sh, replaced"; stop_port "$port"; fi
    mv "$conf.new" "$conf"
}

conf_text() { # port replicaof-port password acl
    local port=$1 of=$2 pass=$3 acl=$4
    cat <<CONF
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
CONF
    # Replication needs PSYNC and REPLCONF, which "imapgate" lacks: the
    # cluster's replicas sync as "setup", the Sentinel pair's as
    # "replication", which the sentinel also uses (as the README's
    # sentinel.conf does).
    if [ -n "${CLUSTER_NODE:-}" ]; then
        printf 'masteruser setup\nmasterauth %s\n' "$(password setup-password)"
    elif [ -n "${SENTINEL_PAIR:-}" ]; then
        printf 'user replication on >%s ~* &* +@all\n' "$(password replication-password)"
        printf 'masteruser replication\nmasterauth %s\n' "$(password replication-password)"
    else
        printf 'masteruser %s\nmasterauth %s\n' "$USER" "$pass"
    fi
    if [ -n "$of" ]; then echo "replicaof 127.0.0.1 $of"; fi
    if [ -n "${CLUSTER_NODE:-}" ]; then
        cat <<CONF
cluster-enabled yes
cluster-config-file $DIR/$port/nodes.conf
cluster-node-timeout 2000
CONF
    fi
    # A user with every right where tests need one: to create the
    # cluster, to make throwaway ACL users (the main instance).
    if [ -n "${CLUSTER_NODE:-}${MAIN:-}" ]; then echo "user setup on >$(password setup-password) ~* &* +@all"; fi
    # The main instance listens on a unix socket too, in its private
    # directory (the tests run as root; a Redis user's group would do).
    if [ -n "${MAIN:-}" ]; then printf 'unixsocket %s\nunixsocketperm 770\n' "$DIR/$port/redis.sock"; fi
}

rcli() { redis-cli --user setup --pass "$(password setup-password)" --no-auth-warning "$@"; }

# cluster_layout says what the cluster instances form: "ok" (every slot
# served, three masters each with one replica, six nodes), "forming" (six
# nodes that know each other, not settled yet: just restarted), or
# "other" (none yet, or an older setup.sh's layout).
cluster_layout() {
    local first=${CLUSTER_PORTS%% *} info nodes masters replicas
    info=$(rcli -p "$first" cluster info 2>/dev/null) || { echo other; return; }
    nodes=$(rcli -p "$first" cluster nodes 2>/dev/null)
    masters=$(echo "$nodes" | awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8' | wc -l)
    replicas=$(echo "$nodes" | awk '$3 ~ /slave/ && $3 !~ /fail/' | wc -l)
    if ! echo "$info" | grep -q '^cluster_known_nodes:6'; then echo other
    elif echo "$info" | grep -q '^cluster_state:ok' && [ "$masters" = 3 ] && [ "$replicas" = 3 ]; then echo ok
    else echo forming; fi
}

# create_cluster makes the six cluster instances one Redis Cluster of
# three masters with one replica each, unless they are one: a cluster
# still forming (restarted) is given 10 s; any other is made anew (its
# instances stopped, their nodes.conf removed, started again).
create_cluster() {
    local all="$CLUSTER_PORTS $CLUSTER_REPLICA_PORTS" addrs="" p i
    for i in $(seq 1 200); do
        case $(cluster_layout) in
        ok) return 0 ;;
        other) break ;;
        esac
        sleep 0.05
    done
    say "making the Redis Cluster on $all anew"
    for p in $all; do stop_port "$p"; rm -f "$DIR/$p/nodes.conf"; start_port "$p"; addrs="$addrs 127.0.0.1:$p"; done
    # shellcheck disable=SC2086
    rcli --cluster create $addrs --cluster-replicas 1 --cluster-yes >"$DIR/cluster-create.log" 2>&1 ||
        die "redis-cli --cluster create failed (see $DIR/cluster-create.log)"
    for i in $(seq 1 200); do
        if [ "$(cluster_layout)" = ok ]; then break; fi
        sleep 0.05
    done
    [ "$(cluster_layout)" = ok ] || die "the Redis Cluster on $all did not reach cluster_state:ok with three masters and three replicas"
    for p in $CLUSTER_REPLICA_PORTS; do
        for i in $(seq 1 200); do
            if rcli -p "$p" info replication | grep -q '^master_link_status:up'; then break; fi
            sleep 0.05
        done
    done
}

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        if redis-cli -p "$port" --user "$USER" --pass "$(password)" --no-auth-warning ping 2>/dev/null | grep -q PONG; then return 0; fi
        sleep 0.05
    done
    die "redis on $port did not answer"
}

# detached runs a daemon without the descriptors this script inherited
# beyond 0-2: a daemon started under `flock LOCK go test …` would
# otherwise hold LOCK for as long as it runs.
detached() {
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec "$@"
    )
}

start_port() {
    local port=$1
    [ -f "$DIR/$port/redis.conf" ] || die "no instance on $port (run start first)"
    if [ -f "$DIR/$port/redis.pid" ] && kill -0 "$(cat "$DIR/$port/redis.pid")" 2>/dev/null; then return 0; fi
    detached redis-server "$DIR/$port/redis.conf"
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
    local conf="$DIR/sentinel/sentinel.conf" pass spass
    pass=$(password replication-password)
    spass=$(password sentinel-password)
    mkdir -p "$DIR/sentinel"
    # A sentinel.conf of an older setup.sh (no ACL user, or connecting to
    # the pair as imapgate) is written anew.
    if [ -f "$conf" ] && { ! grep -q "^user $SENTINEL_USER " "$conf" || ! grep -q "auth-user imapgate replication" "$conf"; }; then
        if [ -f "$DIR/sentinel/sentinel.pid" ]; then kill "$(cat "$DIR/sentinel/sentinel.pid")" 2>/dev/null || true; sleep 0.2; fi
        rm -f "$conf" "$DIR/sentinel/sentinel.pid"
    fi
    if [ ! -f "$conf" ]; then
        cat >"$conf" <<CONF
bind 127.0.0.1
port $PORT_SENTINEL
dir $DIR/sentinel
daemonize yes
pidfile $DIR/sentinel/sentinel.pid
logfile $DIR/sentinel/sentinel.log
sentinel monitor imapgate 127.0.0.1 $PORT_A 1
sentinel auth-user imapgate replication
sentinel auth-pass imapgate $pass
sentinel down-after-milliseconds imapgate 1000
sentinel failover-timeout imapgate 3000
sentinel parallel-syncs imapgate 1
user default off
user $SENTINEL_USER on >$spass allchannels +@all
CONF
    fi
    if [ -f "$DIR/sentinel/sentinel.pid" ] && kill -0 "$(cat "$DIR/sentinel/sentinel.pid")" 2>/dev/null; then return 0; fi
    detached redis-sentinel "$conf"
    local i
    for i in $(seq 1 100); do
        if redis-cli -p "$PORT_SENTINEL" --user "$SENTINEL_USER" --pass "$spass" --no-auth-warning ping 2>/dev/null | grep -q PONG; then return 0; fi
        sleep 0.05
    done
    die "sentinel did not answer"
}

write_env() {
    local pass spass cl="" p
    pass=$(password)
    spass=$(password sentinel-password)
    for p in ${CLUSTER_PORTS#* }; do cl="$cl&addr=127.0.0.1:$p"; done
    cat >"$DIR/env" <<ENV
REDIS_URL='redis://$USER:$pass@127.0.0.1:$PORT_MAIN'
REDIS_UNIX_URL='unix://$USER:$pass@$DIR/$PORT_MAIN/redis.sock'
REDIS_OUTAGE_URL='redis://$USER:$pass@127.0.0.1:$PORT_OUTAGE'
REDIS_OUTAGE_PORT='$PORT_OUTAGE'
REDIS_TICKETS_URL='redis://$USER:$pass@127.0.0.1:$PORT_TICKETS'
REDIS_TICKETS_PORT='$PORT_TICKETS'
REDIS_SENTINEL_URL='redis://$USER:$pass@127.0.0.1:$PORT_SENTINEL?master_set=imapgate&sentinel_username=$SENTINEL_USER&sentinel_password=$spass'
REDIS_SENTINEL_PORT='$PORT_SENTINEL'
REDIS_SENTINEL_USER='$SENTINEL_USER'
REDIS_SENTINEL_PASSWORD='$spass'
REDIS_CLUSTER_URL='redis://$USER:$pass@127.0.0.1:${CLUSTER_PORTS%% *}?${cl#&}'
REDIS_CLUSTER_PORTS='$(echo $CLUSTER_PORTS | tr ' ' ,)'
REDIS_CLUSTER_REPLICA_PORTS='$(echo $CLUSTER_REPLICA_PORTS | tr ' ' ,)'
REDIS_SENTINEL_PORTS='$PORT_A,$PORT_B'
REDIS_ADMIN_URL='redis://setup:$(password setup-password)@127.0.0.1:$PORT_MAIN'
REDIS_SETUP='$(cd "$(dirname "$0")" && pwd)/setup.sh'
REDIS_DIR='$DIR'
ENV
    chmod 600 "$DIR/env"
}

case "${1:-}" in
install) install_packages ;;
start)
    command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null || die "redis-server and redis-sentinel missing (setup.sh install)"
    MAIN=1 write_conf "$PORT_MAIN"; write_conf "$PORT_OUTAGE"; write_conf "$PORT_TICKETS"
    SENTINEL_PAIR=1 write_conf "$PORT_A"; SENTINEL_PAIR=1 write_conf "$PORT_B" "$PORT_A"
    for p in $CLUSTER_PORTS $CLUSTER_REPLICA_PORTS; do CLUSTER_NODE=1 write_conf "$p"; done
    for p in "$PORT_MAIN" "$PORT_OUTAGE" "$PORT_TICKETS" "$PORT_A" "$PORT_B" $CLUSTER_PORTS $CLUSTER_REPLICA_PORTS; do start_port "$p"; done
    create_cluster
    start_sentinel
    write_env
    say "redis on 127.0.0.1:$PORT_MAIN (and $DIR/$PORT_MAIN/redis.sock), $PORT_OUTAGE, $PORT_TICKETS; master $PORT_A, replica $PORT_B, sentinel $PORT_SENTINEL (with auth); cluster on $CLUSTER_PORTS with replicas on $CLUSTER_REPLICA_PORTS; env in $DIR/env"
    ;;
stop)
    if [ -f "$DIR/sentinel/sentinel.pid" ]; then kill "$(cat "$DIR/sentinel/sentinel.pid")" 2>/dev/null || true; fi
    for p in "$PORT_MAIN" "$PORT_OUTAGE" "$PORT_TICKETS" "$PORT_A" "$PORT_B" $CLUSTER_PORTS $CLUSTER_REPLICA_PORTS; do stop_port "$p"; done
    rm -rf "$DIR"
    ;;
stop-port) stop_port "${2:?port}" ;;
start-port) start_port "${2:?port}" ;;
env) cat "$DIR/env" ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
