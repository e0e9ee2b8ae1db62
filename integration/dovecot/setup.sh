#!/usr/bin/env bash
# setup.sh -- run Debian 12's real Dovecot on loopback for imapgate's
# integration tests, configured as an admin does behind a proxy on the same
# host. Needs root. Debian's dovecot-imapd conflicts with courier-imap (which
# the courier tests install), so dovecot-core and dovecot-imapd are never
# installed: they are unpacked into $DIR/root, and Dovecot runs in a private
# mount namespace where that tree is overlaid on /usr (its binaries look for
# libdovecot, their helper programs, modules and doveconf under the
# compiled-in /usr/lib/dovecot and /usr/bin) and a tmpfs-backed overlay is
# on /var/lib (its compiled-in state directory). The host's /usr, /var/lib
# and /etc are untouched; everything else lives under $DIR.
#
#   setup.sh install   apt-get the libraries dovecot-core needs that are
#                      missing (no other package), download and unpack
#                      dovecot-core and dovecot-imapd into $DIR/root
#   setup.sh start     system users, passwd-file users (and a master user),
#                      Maildirs, config;
#                      Dovecot on 127.0.0.1:$PLAIN_PORT (plain) and
#                      127.0.0.1:$HAPROXY_PORT (haproxy = yes)
#   setup.sh stop      stop the Dovecot this script started
#   setup.sh env       write (and print) the file the tests read
#
# The tests find Dovecot through IMAPGATE_DOVECOT=$DIR/env (see
# integration/dovecot_test.go); .ci/run sets it.
set -euo pipefail

DIR=${IMAPGATE_DOVECOT_DIR:-/tmp/imapgate-dovecot}   # must be traversable by the mail user
PLAIN_PORT=${IMAPGATE_DOVECOT_PORT:-11143}
HAPROXY_PORT=${IMAPGATE_DOVECOT_HAPROXY_PORT:-11144}
USERIP_MAX=3                        # mail_max_userip_connections
MAILUSER=imapgatevmail              # owns the test Maildirs
INTERNALUSER=imapgatedv             # Dovecot's default_internal_user (Debian: dovecot)
LOGINUSER=imapgatedvnull            # Dovecot's default_login_user (Debian: dovenull)
USERS="testuser testuser2 testuser3" # IMAP logins, password testpass
MASTER=testmaster                   # a master user (SASL PLAIN authzid), password testpass
PASS=testpass
ROOT=$DIR/root                      # the unpacked packages
DEBS=${IMAPGATE_DOVECOT_DEBS:-$DIR/deb} # downloaded .debs, reused while current
# Only this proxy's address is trusted: test clients come from other
# 127.x.y.z sources and must not be.
TRUSTED="127.0.0.1/32 ::1/128"

say() { printf '[dovecot-setup] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    if running; then die "Dovecot is running from $ROOT: '$0 stop' first"; fi
    # No package may start a daemon (none of these should; belt and braces).
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1
    fi
    local want have=""
    candidate() { apt-cache policy dovecot-core 2>/dev/null | awk '/Candidate:/ && $2 ~ /^[0-9]/ {print $2}'; }
    want=$(candidate)
    if [ -z "$want" ]; then apt-get update -q >&2; want=$(candidate); fi
    [ -n "$want" ] || die "apt knows no dovecot-core (Debian 12's main archive is needed)"
    mkdir -p "$DEBS"
    if ls "$DEBS"/dovecot-core_*.deb "$DEBS"/dovecot-imapd_*.deb >/dev/null 2>&1; then
        have=$(dpkg-deb -f "$(ls "$DEBS"/dovecot-core_*.deb | head -1)" Version)
    fi
    if [ "$have" = "$want" ]; then
        say "using the cached Dovecot $have packages in $DEBS"
    else
        # apt's _apt user downloads into a directory it may write.
        chown _apt "$DEBS" 2>/dev/null || true
        (cd "$DEBS" && rm -f dovecot-core_*.deb dovecot-imapd_*.deb && apt-get download -q dovecot-core dovecot-imapd >&2)
    fi
    # dovecot-core's shared libraries, from its own Depends, and openssl
    # (for the password hashes): install only those missing (any Debian 12
    # version satisfies the others), never dovecot itself, so nothing is
    # started, replaced or upgraded.
    local deps missing="" p
    deps=$(for f in "$DEBS"/dovecot-core_*.deb "$DEBS"/dovecot-imapd_*.deb; do dpkg-deb -f "$f" Depends; done |
        tr ',' '\n' | sed 's/(.*//; s/|.*//; s/[[:space:]]//g' | grep -E '^lib' | grep -v '^libpam-runtime$' | sort -u)
    for p in $deps openssl; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        say "installing what dovecot-core needs and is missing:$missing"
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 $missing >&2
    fi
    if [ -n "$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    for f in "$DEBS"/dovecot-core_*.deb "$DEBS"/dovecot-imapd_*.deb; do dpkg-deb -x "$f" "$ROOT"; done
    [ -x "$ROOT/usr/sbin/dovecot" ] && [ -x "$ROOT/usr/lib/dovecot/imap" ] || die "unpacking Dovecot into $ROOT failed"
    say "Dovecot $want unpacked into $ROOT"
}

# in_ns CMD...: run CMD in a new mount namespace where $ROOT/usr is overlaid
# on /usr and /var/lib has a private writable layer.
in_ns() {
    unshare -m /bin/sh -c '
        set -e
        R=$1; shift
        mount --make-rprivate /
        mount -t overlay overlay -o "lowerdir=$R/usr:/usr" /usr
        mount -t tmpfs -o mode=700 tmpfs "$R/ns"
        mkdir "$R/ns/upper" "$R/ns/work"
        mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$R/ns/upper,workdir=$R/ns/work" /var/lib
        exec "$@"' sh "$ROOT" "$@"
}

locate() {
    [ -x "$ROOT/usr/sbin/dovecot" ] || die "Dovecot not unpacked in $ROOT: run '$0 install'"
    mkdir -p "$ROOT/ns"
    in_ns /bin/true || die "cannot make a mount namespace with overlays on /usr and /var/lib (unshare -m, mount -t overlay): Dovecot cannot run from $ROOT"
}

add_user() {
    id -u "$1" >/dev/null 2>&1 ||
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$1"
}

setup_users() {
    add_user "$MAILUSER"; add_user "$INTERNALUSER"; add_user "$LOGINUSER"
    local uid gid hash u home
    uid=$(id -u "$MAILUSER"); gid=$(id -g "$MAILUSER")
    hash=$(openssl passwd -6 "$PASS")
    mkdir -p "$DIR/etc" "$DIR/home"
    : >"$DIR/etc/passwd.new"
    for u in $USERS; do
        home=$DIR/home/$u
        if [ ! -d "$home/Maildir/cur" ]; then
            mkdir -p "$home/Maildir/cur" "$home/Maildir/new" "$home/Maildir/tmp"
            printf 'From: Alice <alice@example.com>\r\nTo: %s@example.com\r\nSubject: hello from dovecot\r\nMessage-ID: <1.%s@example.com>\r\n\r\nTest body.\r\n' \
                "$u" "$u" >"$home/Maildir/cur/1000000001.M1P1.it:2,S"
        fi
        chown -R "$uid:$gid" "$home"; chmod 700 "$home"
        printf '%s:{SHA512-CRYPT}%s:%s:%s::%s::\n' "$u" "$hash" "$uid" "$gid" "$home" >>"$DIR/etc/passwd.new"
    done
    printf '%s:{SHA512-CRYPT}%s\n' "$MASTER" "$hash" >"$DIR/etc/master-passwd.new"
    for f in passwd master-passwd; do
        chown "root:$INTERNALUSER" "$DIR/etc/$f.new"; chmod 640 "$DIR/etc/$f.new"
        mv "$DIR/etc/$f.new" "$DIR/etc/$f"
    done
    chmod 755 "$DIR" "$DIR/home"
}

write_config() {
    local uid; uid=$(id -u "$MAILUSER")
    mkdir -p "$DIR/log" "$DIR/run"
    # The log process would create it 0600; the tests may read it unprivileged.
    touch "$DIR/log/dovecot.log"; chmod 644 "$DIR/log/dovecot.log"
    cat >"$DIR/etc/dovecot.conf" <<EOF
# imapgate integration tests: Dovecot behind a TLS-terminating proxy on the
# same host (integration/dovecot/setup.sh writes this file).
protocols = imap
listen = 127.0.0.1
base_dir = $DIR/run/dovecot
instance_name = imapgate-dovecot
default_internal_user = $INTERNALUSER
default_internal_group = $INTERNALUSER
default_login_user = $LOGINUSER

# The proxy is the only trusted peer: Dovecot then believes its ID
# x-originating-ip/x-originating-port/x-session-id, treats its plain
# connections as secured, and (haproxy listener) reads its PROXY v2 header.
login_trusted_networks = $TRUSTED
haproxy_trusted_networks = $TRUSTED
disable_plaintext_auth = yes
ssl = no

auth_mechanisms = plain login
auth_verbose = yes
# A master user: AUTHENTICATE PLAIN with authzid=<user> and the master's
# credentials logs in as <user>.
passdb {
  driver = passwd-file
  master = yes
  pass = yes
  args = scheme=SHA512-CRYPT $DIR/etc/master-passwd
}
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT $DIR/etc/passwd
}
userdb {
  driver = passwd-file
  args = $DIR/etc/passwd
}
first_valid_uid = $uid
last_valid_uid = $uid
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
}

protocol imap {
  mail_max_userip_connections = $USERIP_MAX
}

log_path = $DIR/log/dovecot.log
info_log_path = $DIR/log/dovecot.log

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $PLAIN_PORT
  }
  inet_listener imap_haproxy {
    address = 127.0.0.1
    port = $HAPROXY_PORT
    haproxy = yes
  }
  inet_listener imaps {
    port = 0
  }
}
EOF
}

# listening PORT: a socket listens on 127.0.0.1:PORT (read from the kernel,
# not by connecting, which Dovecot would log).
listening() {
    local hex; hex=$(printf '0100007F:%04X' "$1")
    awk -v a="$hex" '$2 == a && $4 == "0A" {found = 1} END {exit !found}' /proc/net/tcp
}

running() { [ -s "$DIR/run/dovecot/master.pid" ] && kill -0 "$(cat "$DIR/run/dovecot/master.pid")" 2>/dev/null; }

do_start() {
    locate
    if running; then say "already running (pid $(cat "$DIR/run/dovecot/master.pid"))"; write_env; return; fi
    setup_users
    write_config
    in_ns /usr/bin/doveconf -c "$DIR/etc/dovecot.conf" -n >/dev/null || die "doveconf rejects $DIR/etc/dovecot.conf"
    # Dovecot's master keeps the descriptors it starts with: give it none of
    # the caller's, or `setup.sh start | tail` would wait for Dovecot to exit.
    in_ns /usr/sbin/dovecot -c "$DIR/etc/dovecot.conf" </dev/null >>"$DIR/log/dovecot-start.log" 2>&1 ||
        die "Dovecot did not start (see $DIR/log/dovecot.log and $DIR/log/dovecot-start.log)"
    local p
    for p in "$PLAIN_PORT" "$HAPROXY_PORT"; do
        for _ in $(seq 100); do listening "$p" && break; sleep 0.1; done
        listening "$p" || die "Dovecot is not listening on 127.0.0.1:$p (see $DIR/log/dovecot.log)"
    done
    write_env
    say "Dovecot ready: imap 127.0.0.1:$PLAIN_PORT, haproxy 127.0.0.1:$HAPROXY_PORT, users $USERS / $PASS; log $DIR/log/dovecot.log; env file $DIR/env"
}

do_stop() {
    if running; then
        local pid; pid=$(cat "$DIR/run/dovecot/master.pid")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && die "Dovecot (pid $pid) did not stop"
        say "Dovecot stopped"
    fi
    rm -f "$DIR/run/dovecot/master.pid"
    # Dovecot ends its children itself; anything left of ours goes too.
    local u uid f
    for u in "$MAILUSER" "$INTERNALUSER" "$LOGINUSER"; do
        uid=$(id -u "$u" 2>/dev/null) || continue
        for f in /proc/[0-9]*/status; do
            if awk -v u="$uid" '$1 == "Uid:" {exit !($2 == u)}' "$f" 2>/dev/null; then
                f=${f#/proc/}; kill "${f%/status}" 2>/dev/null || true
            fi
        done
    done
}

write_env() {
    cat >"$DIR/env" <<EOF
DOVECOT_PLAIN='127.0.0.1:$PLAIN_PORT'
DOVECOT_HAPROXY='127.0.0.1:$HAPROXY_PORT'
DOVECOT_USERS='$USERS'
DOVECOT_PASS='$PASS'
DOVECOT_MASTER='$MASTER'
DOVECOT_USERIP_MAX='$USERIP_MAX'
DOVECOT_LOG='$DIR/log/dovecot.log'
DOVECOT_SETUP='$(readlink -f "$0")'
EOF
}

case ${1:-} in
    install) install_packages ;;
    start) do_start ;;
    stop) do_stop ;;
    env) write_env; cat "$DIR/env" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
