# check-lib.sh -- what dist/install-check.sh and dist/deb/check.sh share:
# free ports, and starting imapgate as the systemd unit would, connecting
# to it and stopping it. Sourced, not run; both scripts define say and die.

# listening PORT: something listens on TCP PORT (any address).
listening() {
    awk -v p="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6
}

# use_free_ports CONFIG: sets port and admin to the example file's 993 and
# 127.0.0.1:9100, or, where those are taken, changes CONFIG to 19993 and
# 19100 on 127.0.0.1 and says so.
use_free_ports() {
    local cfg=$1
    port=993
    if listening 993; then
        port=19993
        listening "$port" && die "ports 993 and $port are both in use"
        sed -i "s|^address = \":993\"\$|address = \"127.0.0.1:$port\"|" "$cfg"
        say "port 993 is in use on this machine: listen.address set to 127.0.0.1:$port in $cfg"
    fi
    admin=127.0.0.1:9100
    if listening 9100; then
        admin=127.0.0.1:19100
        listening 19100 && die "ports 9100 and 19100 are both in use"
        sed -i "s|^address = \"127.0.0.1:9100\"\$|address = \"$admin\"|" "$cfg"
        say "port 9100 is in use: admin.address set to $admin in $cfg"
    fi
}

# serve_check COMMAND BINARY VERSION: runs COMMAND (which must exec BINARY
# as user imapgate with CAP_NET_BIND_SERVICE only) in the background; checks
# that it listens, presents /etc/imapgate/imapd.pem over TLS on $port and
# answers IMAP (a greeting if an IMAP server is on 127.0.0.1:143, else its
# "* BYE [UNAVAILABLE]"), that imapgate_build_info on $admin carries VERSION;
# then stops it with SIGTERM and expects exit 0. pid is set while it runs.
serve_check() {
    local cmd=$1 bin=$2 version=$3 log
    log=$(mktemp /tmp/imapgate-serve.XXXXXX)
    bash -c "$cmd" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        grep -q 'listening on' "$log" && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "imapgate exited"; }
        sleep 0.1
    done
    grep -q 'listening on' "$log" || { cat "$log" >&2; die "imapgate did not report listening"; }
    [ "$(readlink /proc/$pid/exe)" = "$bin" ] || die "pid $pid is $(readlink /proc/$pid/exe), not $bin"
    [ "$(stat -c %U /proc/$pid)" = imapgate ] || die "imapgate runs as $(stat -c %U /proc/$pid)"
    local capeff
    capeff=$(awk '/^CapEff:/ { print $2 }' /proc/$pid/status)
    [ $((0x$capeff)) = $((1 << 10)) ] || die "imapgate's effective capabilities are $capeff, want only CAP_NET_BIND_SERVICE (0x400)"
    say "imapgate runs as user imapgate with only CAP_NET_BIND_SERVICE: $(grep 'listening on' "$log" | head -1)"

    local want got s_out
    want=$(openssl x509 -in /etc/imapgate/imapd.pem -noout -fingerprint -sha256)
    s_out=$( (sleep 2; printf 'a LOGOUT\r\n'; sleep 1) | timeout 15 openssl s_client -connect "127.0.0.1:$port" -servername "$(hostname)" 2>&1 || true)
    got=$(printf '%s\n' "$s_out" | openssl x509 -noout -fingerprint -sha256 2>/dev/null || true)
    if [ -z "$got" ] || [ "$got" != "$want" ]; then
        printf '%s\n' "$s_out" >&2; die "TLS on 127.0.0.1:$port did not present /etc/imapgate/imapd.pem"
    fi
    printf '%s\n' "$s_out" | grep -E '^\* (OK|BYE)' >&2 ||
        { printf '%s\n' "$s_out" >&2; die "no IMAP greeting or BYE over TLS on 127.0.0.1:$port"; }
    say "TLS on 127.0.0.1:$port with /etc/imapgate/imapd.pem, and an IMAP answer"

    local build
    build=$(curl -sf "http://$admin/metrics" | grep '^imapgate_build_info{') || die "no imapgate_build_info on $admin"
    say "$build"
    printf '%s\n' "$build" | grep -qF "version=\"$version\"" || die "imapgate_build_info does not carry version $version"

    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    pid=""
    [ "$status" = 0 ] || { cat "$log" >&2; die "imapgate exited $status on SIGTERM"; }
    grep -q 'shutting down' "$log" || { cat "$log" >&2; die "no shutdown line"; }
    rm -f "$log"
    say "stopped by SIGTERM, exit 0"
}

# stop_serving: for traps.
stop_serving() {
    if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null || true
    fi
    pid=""
}
