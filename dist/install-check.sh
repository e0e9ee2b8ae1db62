#!/usr/bin/env bash
# install-check.sh -- run README.md's install steps exactly as written, on
# this machine, as root; start imapgate as the systemd unit would (its
# ExecStart command line, as user imapgate with CAP_NET_BIND_SERVICE),
# connect to it with openssl s_client, stop it with SIGTERM, and then run
# the README's uninstall block and check that nothing is left.
#
# The blocks are the ```sh fences after "<!-- install-check: NAME -->" in
# README.md: install, run and uninstall are executed; systemd is not (no
# systemd runs here): both units are checked with systemd-analyze verify
# against the installed binary instead, where systemd-analyze exists.
#
# It refuses to run on a host where imapgate is installed (user, binary or
# /etc/imapgate present), unless a killed earlier run of this script left
# them (its marker file says so): then it removes them first.
#
# If something already listens on port 993, the configuration's
# listen.address is changed to 127.0.0.1:19993 after the install block (and
# the admin address likewise if 9100 is taken), and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[install-check] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
. dist/check-lib.sh

# block NAME prints README.md's shell block marked NAME.
block() {
    local b
    b=$(awk -v m="<!-- install-check: $1 -->" '
        $0 == m { found = 1; next }
        found && !inside && /^```sh$/ { inside = 1; next }
        inside && /^```$/ { exit }
        inside { print }' README.md)
    [ -n "$b" ] || die "README.md has no block marked '<!-- install-check: $1 -->'"
    printf '%s\n' "$b"
}

marker=/var/tmp/imapgate-install-check.running
# Directories the install block may create that this host did not have.
maybe_dirs="/usr/local/share/man/man8 /usr/local/share/man /etc/sysusers.d /etc/tmpfiles.d /etc/logrotate.d"
pid=""

leftovers() {
    local p
    getent passwd imapgate >/dev/null && echo "user imapgate"
    getent group imapgate >/dev/null && echo "group imapgate"
    for p in /usr/local/sbin/imapgate /usr/local/share/man/man8/imapgate.8 /etc/imapgate /var/log/imapgate \
        /run/imapgate /etc/sysusers.d/imapgate.conf /etc/tmpfiles.d/imapgate.conf /etc/logrotate.d/imapgate \
        /etc/systemd/system/imapgate.service /etc/systemd/system/imapgate.socket; do
        [ -e "$p" ] && echo "$p"
    done
    return 0
}

undo() {
    stop_serving
    say "uninstall block (README.md, as written):"
    block uninstall | sed 's/^/    /' >&2
    bash -x -c "$(block uninstall)" || say "the uninstall block failed (exit $?)"
    local d
    if [ -f "$marker" ]; then
        for d in $(cat "$marker"); do rmdir "$d" 2>/dev/null || true; done
    fi
    rm -f "$marker"
    local left
    left=$(leftovers)
    if [ -n "$left" ]; then
        say "FAIL: the uninstall block left: $(echo $left)"
        # Do not leave the host changed all the same.
        getent passwd imapgate >/dev/null && userdel imapgate
        getent group imapgate >/dev/null && groupdel imapgate
        return 1
    fi
    say "uninstalled: no imapgate user, group or file is left"
}

if [ -n "$(leftovers)" ]; then
    [ -f "$marker" ] || die "imapgate is installed on this host ($(echo $(leftovers))): install-check would overwrite it"
    say "removing what an interrupted earlier run left: $(echo $(leftovers))"
    undo
fi

# Which of the directories the block may create are missing now (removed
# again at the end, if empty).
missing=""
for d in $maybe_dirs; do [ -d "$d" ] || missing="$missing $d"; done
echo "$missing" >"$marker"
trap 'status=$?; undo || status=1; exit $status' EXIT

say "install block (README.md, as written):"
block install | sed 's/^/    /' >&2
bash -euxo pipefail -c "$(block install)"

# What the block made.
getent passwd imapgate | grep -q ':/usr/sbin/nologin$' || die "user imapgate missing or has a login shell"
[ "$(stat -c '%U:%G %a' /etc/imapgate)" = "root:imapgate 750" ] || die "/etc/imapgate: $(stat -c '%U:%G %a' /etc/imapgate)"
[ "$(stat -c '%U:%G %a' /etc/imapgate/imapd.pem)" = "root:imapgate 640" ] || die "imapd.pem: $(stat -c '%U:%G %a' /etc/imapgate/imapd.pem)"
[ "$(stat -c '%U:%G' /var/log/imapgate)" = "imapgate:imapgate" ] || die "/var/log/imapgate: $(stat -c '%U:%G' /var/log/imapgate)"
[ -f /etc/logrotate.d/imapgate ] || die "/etc/logrotate.d/imapgate missing"
if command -v logrotate >/dev/null; then
    logrotate -d /etc/logrotate.d/imapgate >/dev/null 2>&1 || die "logrotate -d rejects /etc/logrotate.d/imapgate"
fi
if [ -f /etc/courier/imapd.pem ]; then say "certificate: courier's /etc/courier/imapd.pem"; else say "certificate: generated with openssl"; fi
if command -v man >/dev/null; then
    MANWIDTH=80 man -l /usr/local/share/man/man8/imapgate.8 2>/dev/null | grep -q 'open_files_check' || die "the manual page lacks the configuration"
fi

if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify dist/systemd/imapgate.service dist/systemd/imapgate.socket 2>&1) || die "systemd-analyze verify: $out"
    [ -z "$out" ] || die "systemd-analyze verify warns: $out"
    say "systemd-analyze verify: both units clean"
else
    say "systemd-analyze not installed: units not verified"
fi

# The run block must be the unit's ExecStart command line, behind setpriv.
run=$(block run)
execstart=$(sed -n 's/^ExecStart=//p' dist/systemd/imapgate.service)
[ "$(printf '%s\n' "$run" | sed -n '$p' | sed 's/^ *//')" = "$execstart" ] ||
    die "the README's run block does not end with the unit's ExecStart ($execstart)"

use_free_ports /etc/imapgate/imapgate.toml
say "run block (README.md, as written), in the background:"
printf '%s\n' "$run" | sed 's/^/    /' >&2
serve_check "$run" /usr/local/sbin/imapgate "$(/usr/local/sbin/imapgate -version | awk '{ print $2 }')"
say "install-check passed"
