#!/usr/bin/env bash
# setup.sh -- run Debian's real courier-imap on loopback for imapgate's
# integration tests. Needs root (apt, userdb, authdaemond). No systemd and no
# syslog daemon are needed: courier logs to a private rsyslogd through a
# private /dev/log inside a mount namespace.
#
# The host's courier configuration is never changed: every courier process
# (authdaemond, couriertcpd, imaplogin, imapd, and the userdb tools) runs in
# a mount namespace where /etc/courier is $DIR/courier-etc (a copy of the
# host's, switched to authuserdb with the test users), /run/courier is
# $DIR/courier-run (so the test authdaemond's socket is not the host's) and
# /dev is $DIR/dev. For exec mode the tests start $DIR/run/imaplogin, which
# enters that namespace. What start does change on the host, stop restores:
# the system user $MAILUSER is created if missing and removed again.
# Earlier versions of this script edited /etc/courier itself; `restore-host`
# puts back what they left (authdaemonrc.imapgate-orig, the test users in
# /etc/courier/userdb, the user $MAILUSER).
#
#   setup.sh install   apt-get the packages (courier-imap is unpacked into
#                      $DIR/pkg instead if installing it would remove another
#                      package, e.g. dovecot-imapd: they conflict)
#   setup.sh start     private rsyslogd, authdaemond with userdb, imapd on
#                      127.0.0.1:$PLAIN_PORT and imapd-ssl on 127.0.0.1:$TLS_PORT
#   setup.sh restart   stop and start imapd (plain) only
#   setup.sh stop      stop everything this script started, remove the
#                      user it created
#   setup.sh env       print the file the tests read
#   setup.sh restore-host
#                      undo what earlier versions left in /etc/courier
#
# The tests find courier through IMAPGATE_COURIER=$DIR/env (see
# integration/courier_test.go); .ci/run sets it.
set -euo pipefail

DIR=${IMAPGATE_COURIER_DIR:-/tmp/imapgate-courier}   # must be traversable by the mail user
PLAIN_PORT=${IMAPGATE_COURIER_PORT:-10143}
TLS_PORT=${IMAPGATE_COURIER_TLS_PORT:-10993}
MAILUSER=${IMAPGATE_COURIER_MAILUSER:-imapgateit}   # system user owning the test Maildirs
USERS="testuser testuser2"   # IMAP logins, password testpass
PASS=testpass

say() { printf '[courier-setup] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts would start courier on 0.0.0.0:143/993: forbid it.
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1
    fi
    if ! apt-cache policy courier-base 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -q; fi
    apt-get install -y -q -o DPkg::Lock::Timeout=300 \
        courier-base courier-authdaemon courier-authlib-userdb rsyslog curl openssl ca-certificates util-linux >&2
    if dpkg-query -W -f='${Status}' courier-imap 2>/dev/null | grep -q 'install ok installed'; then
        say "courier-imap already installed"
    elif apt-get -s install courier-imap 2>/dev/null | grep -q '^Remv'; then
        say "installing courier-imap would remove $(apt-get -s install courier-imap | awk '/^Remv/{print $2}' | tr '\n' ' '): unpacking it into $DIR/pkg"
        mkdir -p "$DIR/pkg/deb"
        (cd "$DIR/pkg/deb" && rm -f courier-imap_*.deb && apt-get download courier-imap >&2)
        dpkg-deb -x "$DIR"/pkg/deb/courier-imap_*.deb "$DIR/pkg/root"
    else
        apt-get install -y -q -o DPkg::Lock::Timeout=300 courier-imap >&2
    fi
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
    # If a package script started the stock daemons anyway, stop them.
    for d in imapd imapd-ssl; do
        if [ -x /usr/sbin/$d ] && [ -s /run/courier/$d.pid ]; then /usr/sbin/$d stop >&2 || true; fi
    done
}

locate() {
    if [ -x /usr/lib/courier/courier/imaplogin ] && [ -f /etc/courier/imapd ]; then
        ROOT=""
    elif [ -x "$DIR/pkg/root/usr/lib/courier/courier/imaplogin" ]; then
        ROOT="$DIR/pkg/root"
    else
        die "courier-imap not found: run '$0 install'"
    fi
    IMAPLOGIN=$ROOT/usr/lib/courier/courier/imaplogin
    IMAPD=$ROOT/usr/bin/imapd
    [ -x /usr/sbin/couriertcpd ] || die "couriertcpd missing (courier-base)"
}

# Courier writes to /dev/log; a private rsyslogd listens on $DIR/dev/log and
# courier runs in a mount namespace where that socket is /dev/log.
start_syslog() {
    mkdir -p "$DIR/log" "$DIR/dev" "$DIR/run" "$DIR/spool" "$DIR/etc"
    cat >"$DIR/etc/rsyslog.conf" <<EOF
global(workDirectory="$DIR/spool")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="$DIR/dev/log")
mail.* action(type="omfile" file="$DIR/log/mail.log" template="RSYSLOG_TraditionalFileFormat")
EOF
    if [ -s "$DIR/run/rsyslogd.pid" ] && kill -0 "$(cat "$DIR/run/rsyslogd.pid")" 2>/dev/null; then return; fi
    rsyslogd -f "$DIR/etc/rsyslog.conf" -i "$DIR/run/rsyslogd.pid"
    for _ in $(seq 50); do [ -S "$DIR/dev/log" ] && break; sleep 0.1; done
    [ -S "$DIR/dev/log" ] || die "rsyslogd did not create $DIR/dev/log"
    cat >"$DIR/run/in-ns" <<'EOF'
#!/bin/sh
# in-ns DIR CMD...: run CMD where /dev is DIR/dev (real device nodes bound
# in), /etc/courier is DIR/courier-etc and /run/courier is DIR/courier-run.
D=$1; shift
exec unshare -m /bin/sh -c '
    D=$1; shift
    mount --make-rprivate / || exit 1
    for n in null zero full random urandom tty; do
        [ -e "$D/dev/$n" ] || : >"$D/dev/$n"
        mount --bind "/dev/$n" "$D/dev/$n" || exit 1
    done
    mount --rbind "$D/dev" /dev || exit 1
    mount --bind "$D/courier-etc" /etc/courier || exit 1
    mount --bind "$D/courier-run" /run/courier || exit 1
    exec "$@"' sh "$D" "$@"
EOF
    chmod 755 "$DIR/run/in-ns"
    "$DIR/run/in-ns" "$DIR" /bin/true || die "cannot make a mount namespace (unshare -m): courier's log lines could not be captured"
}

in_ns() { "$DIR/run/in-ns" "$DIR" "$@"; }

# private_courier: $DIR/courier-etc, a fresh copy of the host's
# /etc/courier with authuserdb, and $DIR/courier-run for authdaemond's
# socket; both stand in for the host's inside the namespace.
private_courier() {
    [ -d /etc/courier ] || die "/etc/courier missing (courier-base)"
    # A mount point for the private /run/courier; created empty if the host
    # has none (stop removes it again).
    if [ ! -d /run/courier ]; then mkdir -p /run/courier; touch "$DIR/run/run-courier.ours"; fi
    rm -rf "$DIR/courier-etc"
    cp -a /etc/courier "$DIR/courier-etc"
    rm -f "$DIR"/courier-etc/userdb*
    sed -i 's/^authmodulelist=.*/authmodulelist="authuserdb"/' "$DIR/courier-etc/authdaemonrc"
    mkdir -p "$DIR/courier-run/authdaemon"
    chown courier:courier "$DIR/courier-run/authdaemon"; chmod 750 "$DIR/courier-run/authdaemon"
}

setup_users() {
    if ! id -u "$MAILUSER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir "$DIR/home" --shell /usr/sbin/nologin "$MAILUSER"
        touch "$DIR/run/mailuser.ours"
    fi
    local uid gid; uid=$(id -u "$MAILUSER"); gid=$(id -g "$MAILUSER")
    in_ns sh -c 'touch /etc/courier/userdb && chmod 600 /etc/courier/userdb'
    for u in $USERS; do
        local home=$DIR/home/$u
        if [ ! -d "$home/Maildir/cur" ]; then
            mkdir -p "$home"; maildirmake.courier "$home/Maildir"
            printf 'From: Alice <alice@example.com>\r\nTo: %s@example.com\r\nSubject: hello from courier\r\nMessage-ID: <1.%s@example.com>\r\n\r\nTest body.\r\n' \
                "$u" "$u" >"$home/Maildir/cur/1000000001.M1P1.it:2,S"
            # A 1 MiB message for byte-exact FETCH through the proxy.
            { printf 'From: Bob <bob@example.com>\r\nTo: %s@example.com\r\nSubject: big\r\nMessage-ID: <2.%s@example.com>\r\n\r\n' "$u" "$u"
              head -c 786432 /dev/urandom | base64 -w 76 | sed 's/$/\r/'; } >"$home/Maildir/cur/1000000002.M2P1.it:2,S"
        fi
        chown -R "$uid:$gid" "$home"; chmod 700 "$home"
        in_ns userdb "$u" set uid="$uid" gid="$gid" home="$home" mail="$home/Maildir"
        printf '%s\n' "$PASS" | userdbpw -md5 | in_ns userdb "$u" set systempw
    done
    chmod 755 "$DIR" "$DIR/home"
    in_ns makeuserdb
}

start_authdaemon() {
    # Ours only: the host's authdaemond (if any) has its own /run/courier.
    if [ -s "$DIR/courier-run/authdaemon/pid" ] && kill -0 "$(cat "$DIR/courier-run/authdaemon/pid")" 2>/dev/null; then
        in_ns /usr/sbin/authdaemond stop >&2 || true; sleep 1   # reload authdaemonrc
    fi
    in_ns /usr/sbin/authdaemond start
    for _ in $(seq 50); do [ -S "$DIR/courier-run/authdaemon/socket" ] && break; sleep 0.1; done
    [ -S "$DIR/courier-run/authdaemon/socket" ] || die "authdaemond did not start"
    touch "$DIR/run/authdaemond.ours"
}

# The imaplogin the exec-mode tests start: courier's, in the namespace.
write_imaplogin_wrapper() {
    cat >"$DIR/run/imaplogin" <<EOF
#!/bin/sh
exec "$DIR/run/in-ns" "$DIR" "$IMAPLOGIN" "\$@"
EOF
    chmod 755 "$DIR/run/imaplogin"
}

write_configs() {
    # Debian's files as shipped, our settings appended (sourced by /bin/sh:
    # the last assignment wins). All sessions come from imapgate on
    # 127.0.0.1, so MAXPERIP must be raised (README: courier behind imapgate).
    cp "$ROOT/etc/courier/imapd" "$DIR/etc/imapd"
    cat >>"$DIR/etc/imapd" <<EOF

# --- imapgate integration tests ---
ADDRESS=127.0.0.1
PORT=127.0.0.1.$PLAIN_PORT
MAXDAEMONS=800
MAXPERIP=800
PIDFILE=$DIR/run/imapd.pid
IMAPACCESSFILE=$DIR/etc/imapaccess
EOF
    cp "$ROOT/etc/courier/imapd-ssl" "$DIR/etc/imapd-ssl"
    cat >>"$DIR/etc/imapd-ssl" <<EOF

# --- imapgate integration tests ---
SSLADDRESS=127.0.0.1
SSLPORT=127.0.0.1.$TLS_PORT
SSLPIDFILE=$DIR/run/imapd-ssl.pid
IMAPDSTARTTLS=YES
IMAP_TLS_REQUIRED=0
TLS_CERTFILE=$DIR/etc/imapd.pem
TLS_DHPARAMS=$DIR/etc/dhparams.pem
TLS_CACHEFILE=$DIR/run/sslcache
EOF
    mkdir -p "$DIR/etc/imapaccess.d"; : >"$DIR/etc/imapaccess.d/local"
    /usr/lib/courier/makedat -src="$DIR/etc/imapaccess.d" -file="$DIR/etc/imapaccess.dat" -tmp="$DIR/etc/imapaccess.tmp"
    if [ ! -s "$DIR/etc/imapd.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
            -keyout "$DIR/etc/key.pem" -out "$DIR/etc/cert.pem" 2>/dev/null
        cat "$DIR/etc/key.pem" "$DIR/etc/cert.pem" >"$DIR/etc/imapd.pem"; rm -f "$DIR/etc/key.pem" "$DIR/etc/cert.pem"
        openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out "$DIR/etc/dhparams.pem" 2>/dev/null
    fi
    chown courier:courier "$DIR/etc/imapd.pem" "$DIR/etc/dhparams.pem"
    chmod 600 "$DIR/etc/imapd.pem" "$DIR/etc/dhparams.pem"
}

# start_imapd plain|ssl: the command line Debian's start scripts build.
start_imapd() {
    local which=$1 pidfile inner
    if [ "$which" = plain ]; then pidfile=$DIR/run/imapd.pid; else pidfile=$DIR/run/imapd-ssl.pid; fi
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return; fi
    rm -f "$DIR/run/sslcache"; touch "$DIR/run/sslcache"; chown courier:courier "$DIR/run/sslcache"; chmod 600 "$DIR/run/sslcache"
    if [ "$which" = plain ]; then
        inner="set -a; . '$DIR/etc/imapd-ssl'; . '$DIR/etc/imapd'; IMAP_STARTTLS=\$IMAPDSTARTTLS;
          exec /usr/sbin/courierlogger -pid=\$PIDFILE -start \$LOGGEROPTS /usr/sbin/couriertcpd \
            -address=\$ADDRESS -maxprocs=\$MAXDAEMONS -maxperip=\$MAXPERIP -access=\$IMAPACCESSFILE.dat \
            \$TCPDOPTS \$PORT '$IMAPLOGIN' '$IMAPD' \$MAILDIRPATH"
    else
        inner="set -a; . '$DIR/etc/imapd'; . '$DIR/etc/imapd-ssl'; IMAP_TLS=1;
          exec /usr/sbin/courierlogger -pid=\$SSLPIDFILE -start \$SSLLOGGEROPTS /usr/sbin/couriertcpd \
            -address=\$SSLADDRESS -maxprocs=\$MAXDAEMONS -maxperip=\$MAXPERIP -access=\$IMAPACCESSFILE.dat \
            \$TCPDOPTS \$SSLPORT \$COURIERTLS -server -tcpd -user=courier '$IMAPLOGIN' '$IMAPD' \$MAILDIRPATH"
    fi
    ( umask 022; ulimit -v 131072; in_ns /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c "$inner" )
    local port=$PLAIN_PORT; [ "$which" = ssl ] && port=$TLS_PORT
    # courierlogger exits 0 even when couriertcpd fails: check the port.
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
    die "courier $which is not listening on 127.0.0.1:$port (see $DIR/log/mail.log)"
}

stop_imapd() {
    local pidfile=$1
    [ -s "$pidfile" ] || return 0
    /usr/sbin/courierlogger -pid="$pidfile" -stop >&2 || true
    rm -f "$pidfile" "$pidfile.lock"
}

write_env() {
    cat >"$DIR/env" <<EOF
COURIER_PLAIN='127.0.0.1:$PLAIN_PORT'
COURIER_TLS='127.0.0.1:$TLS_PORT'
COURIER_USERS='$USERS'
COURIER_PASS='$PASS'
COURIER_LOG='$DIR/log/mail.log'
COURIER_IMAPLOGIN='$DIR/run/imaplogin'
COURIER_IMAPD='$IMAPD'
COURIER_ETC='$DIR/etc'
COURIER_SETUP='$(readlink -f "$0")'
EOF
}

do_start() {
    locate
    mkdir -p "$DIR/etc" "$DIR/run"; chmod 755 "$DIR"
    private_courier
    start_syslog
    setup_users
    write_configs
    start_authdaemon
    write_imaplogin_wrapper
    start_imapd plain
    start_imapd ssl
    write_env
    say "courier ready: imap 127.0.0.1:$PLAIN_PORT, imaps 127.0.0.1:$TLS_PORT, users $USERS / $PASS; env file $DIR/env"
}

do_stop() {
    stop_imapd "$DIR/run/imapd-ssl.pid"
    stop_imapd "$DIR/run/imapd.pid"
    if id -u "$MAILUSER" >/dev/null 2>&1; then
        for p in $(ps -o pid= -u "$MAILUSER" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    fi
    if [ -f "$DIR/run/authdaemond.ours" ]; then in_ns /usr/sbin/authdaemond stop >&2 || true; rm -f "$DIR/run/authdaemond.ours"; fi
    if [ -s "$DIR/run/rsyslogd.pid" ]; then kill "$(cat "$DIR/run/rsyslogd.pid")" 2>/dev/null || true; rm -f "$DIR/run/rsyslogd.pid"; fi
    if [ -f "$DIR/run/mailuser.ours" ]; then
        for _ in $(seq 20); do [ -z "$(ps -o pid= -u "$MAILUSER" 2>/dev/null)" ] && break; sleep 0.1; done
        userdel "$MAILUSER" && rm -f "$DIR/run/mailuser.ours"
    fi
    if [ -f "$DIR/run/run-courier.ours" ]; then rmdir /run/courier 2>/dev/null || true; rm -f "$DIR/run/run-courier.ours"; fi
}

# restore_host undoes what versions of this script before the private
# namespace left on the host: authuserdb in /etc/courier/authdaemonrc (the
# original kept as authdaemonrc.imapgate-orig), the test users in
# /etc/courier/userdb and the user $MAILUSER.
restore_host() {
    local rc=/etc/courier/authdaemonrc
    if [ -f "$rc.imapgate-orig" ]; then
        mv "$rc.imapgate-orig" "$rc"; say "restored $rc"
        for u in $USERS; do
            if [ -f /etc/courier/userdb ] && grep -q "^$u	" /etc/courier/userdb; then userdb "$u" del; say "removed $u from /etc/courier/userdb"; fi
        done
        if [ -f /etc/courier/userdb ] && [ ! -s /etc/courier/userdb ]; then
            rm -f /etc/courier/userdb /etc/courier/userdb.dat /etc/courier/userdbshadow.dat /etc/courier/userdb.lock /etc/courier/.lock.userdb
        elif [ -f /etc/courier/userdb ]; then
            makeuserdb
        fi
    fi
    if id -u "$MAILUSER" >/dev/null 2>&1 && [ -z "$(ps -o pid= -u "$MAILUSER" 2>/dev/null)" ]; then
        userdel "$MAILUSER"; say "removed user $MAILUSER"
    fi
}

case ${1:-} in
    install) install_packages ;;
    start) do_start ;;
    restart) locate; stop_imapd "$DIR/run/imapd.pid"; sleep 0.5; start_imapd plain ;;
    stop) do_stop ;;
    env) cat "$DIR/env" ;;
    restore-host) restore_host ;;
    *) echo "usage: $0 install|start|restart|stop|env|restore-host" >&2; exit 2 ;;
esac
