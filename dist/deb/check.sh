#!/usr/bin/env bash
# check.sh DEB -- install the package built by build.sh on this machine (as
# root, with a policy-rc.d that forbids starting services), check its files,
# user, permissions and imapgate -version, start imapgate as its systemd
# unit would (the unit's ExecStartPre and ExecStart, as its User= with its
# AmbientCapabilities= and LimitNOFILE=; no systemd runs here), connect with
# openssl s_client, stop it, then dpkg --purge it and remove the imapgate
# user, which purge leaves as Debian does. Nothing of it is left afterwards.
#
# Refuses to run where imapgate is installed or its user exists, unless an
# interrupted earlier run of this script left them. Port 993 (or 9100) in
# use: see dist/check-lib.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '[deb-check] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
. dist/check-lib.sh
deb=${1:-}
[ -f "$deb" ] || die "usage: dist/deb/check.sh dist/deb/build/imapgate_VERSION_ARCH.deb"
version=$(dpkg-deb -f "$deb" Version)

marker=/var/tmp/imapgate-deb-check.running
pid=""
guard=""

installed() { dpkg-query -W -f='${db:Status-Status}' imapgate 2>/dev/null | grep -qv '^not-installed$'; }

# Paths the package ships, from the spec.
shipped() { awk '!/^#/ && NF == 3 { print $2 }' dist/deb/files; }

leftovers() {
    local p
    installed && echo "package imapgate"
    getent passwd imapgate >/dev/null && echo "user imapgate"
    getent group imapgate >/dev/null && echo "group imapgate"
    for p in $(shipped) /etc/imapgate /var/log/imapgate /run/imapgate; do [ -e "$p" ] && echo "$p"; done
    return 0
}

cleanup() {
    stop_serving
    rm -f /etc/imapgate/imapd.pem
    if installed; then dpkg --purge imapgate >&2 || say "dpkg --purge failed"; fi
    getent passwd imapgate >/dev/null && userdel imapgate
    getent group imapgate >/dev/null && groupdel imapgate
    if [ -n "$guard" ]; then rm -f /usr/sbin/policy-rc.d; guard=""; fi
    rm -f "$marker"
    local left
    left=$(leftovers)
    [ -z "$left" ] || { say "FAIL: left behind: $(echo $left)"; return 1; }
}

if [ -n "$(leftovers)" ]; then
    [ -f "$marker" ] || die "imapgate is installed on this host ($(echo $(leftovers))): deb-check would overwrite it"
    say "removing what an interrupted earlier run left: $(echo $(leftovers))"
    cleanup
fi
touch "$marker"
trap 'status=$?; cleanup || status=1; exit $status' EXIT

if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1
fi

say "dpkg -i $deb"
dpkg -i "$deb" >&2

# Files, conffiles, user, permissions.
for p in $(shipped); do [ -f "$p" ] || die "$p not installed"; done
for p in $(shipped); do dpkg -L imapgate | grep -qx "$p" || die "$p not listed by dpkg -L"; done
for c in /etc/imapgate/imapgate.toml /etc/logrotate.d/imapgate; do
    dpkg-query -W -f='${Conffiles}\n' imapgate | grep -q " $c " || die "$c is not a conffile"
done
for f in /lib/systemd/system/imapgate.service /etc/logrotate.d/imapgate; do
    ! grep -q /usr/local "$f" || die "$f names /usr/local, where the package installs nothing: $(grep /usr/local "$f")"
done
getent passwd imapgate | grep -q ':/nonexistent:/usr/sbin/nologin$' || die "user imapgate: $(getent passwd imapgate)"
[ "$(stat -c '%U:%G %a' /etc/imapgate)" = "root:imapgate 750" ] || die "/etc/imapgate: $(stat -c '%U:%G %a' /etc/imapgate)"
[ "$(stat -c '%U:%G %a' /etc/imapgate/imapgate.toml)" = "root:imapgate 640" ] ||
    die "imapgate.toml: $(stat -c '%U:%G %a' /etc/imapgate/imapgate.toml)"
[ "$(stat -c '%U:%G' /var/log/imapgate)" = "imapgate:imapgate" ] || die "/var/log/imapgate: $(stat -c '%U:%G' /var/log/imapgate)"
ls /etc/systemd/system/*.wants/imapgate.* >/dev/null 2>&1 && die "the package enabled a unit"
out=$(imapgate -version)
[ "${out#imapgate "$version" (}" != "$out" ] || die "imapgate -version: $out (want $version)"
say "$out"
if command -v man >/dev/null; then
    MANWIDTH=80 man -l /usr/share/man/man8/imapgate.8.gz 2>/dev/null | grep -q open_files_check || die "man page lacks the configuration"
fi
unit=/lib/systemd/system/imapgate.service
if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify "$unit" /lib/systemd/system/imapgate.socket 2>&1) || die "systemd-analyze verify: $out"
    [ -z "$out" ] || die "systemd-analyze verify warns: $out"
    say "systemd-analyze verify: both packaged units clean"
fi
say "files, conffiles, user imapgate, /etc/imapgate root:imapgate 750, nothing enabled: ok"

# The unit's view of how to run it.
grep -qx 'User=imapgate' "$unit" || die "$unit: no User=imapgate"
grep -qx 'AmbientCapabilities=CAP_NET_BIND_SERVICE' "$unit" || die "$unit: capabilities changed"
nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
if ! prlimit --nofile="$nofile:$nofile" -- true 2>/dev/null; then
    say "LimitNOFILE=$nofile cannot be set here (no CAP_SYS_RESOURCE in this sandbox): using the hard limit $(ulimit -Hn)"
    nofile=$(ulimit -Hn)
fi
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
start=$(sed -n 's/^ExecStart=//p' "$unit")
case $start in /usr/sbin/imapgate\ *) ;; *) die "ExecStart=$start" ;; esac

say "certificate: a generated one in /etc/imapgate/imapd.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$(hostname)" -keyout /etc/imapgate/imapd.pem -out /etc/imapgate/imapd.pem 2>/dev/null
chgrp imapgate /etc/imapgate/imapd.pem
chmod 640 /etc/imapgate/imapd.pem
use_free_ports /etc/imapgate/imapgate.toml

as_unit="prlimit --nofile=$nofile:$nofile -- setpriv --reuid=imapgate --regid=imapgate --init-groups --no-new-privs --inh-caps=+net_bind_service --ambient-caps=+net_bind_service"
say "ExecStartPre, as the unit runs it: $pre"
$as_unit $pre >/dev/null || die "ExecStartPre failed"
say "ExecStart, as the unit runs it: $as_unit $start"
serve_check "exec $as_unit $start" /usr/sbin/imapgate "$version"

rm -f /etc/imapgate/imapd.pem
say "dpkg --purge imapgate"
dpkg --purge imapgate >&2
installed && die "still installed after purge"
for p in $(shipped) /etc/imapgate /var/log/imapgate; do [ -e "$p" ] && die "$p left after purge"; done
getent passwd imapgate >/dev/null || die "purge removed the imapgate user (expected to stay, as Debian leaves system users)"
userdel imapgate
say "purged; user imapgate removed by this script"
say "deb-check passed"
