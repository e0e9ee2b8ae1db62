package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"imapgate/cluster"
)

// A refusal from the admin endpoint reads as the error it carries, not as
// HTTP and escaped JSON; a body that is not its JSON is shown whole.
func TestCtlError(t *testing.T) {
	body := []byte(`{"error":"imapgate.toml:3: kernel.table: got \"bad-name\"\nimapgate.toml:5: limits.max_per_ip: must not be negative"}` + "\n")
	want := "imapgate.toml:3: kernel.table: got \"bad-name\"\nimapgate.toml:5: limits.max_per_ip: must not be negative"
	if got := ctlError("422 Unprocessable Entity", body).Error(); got != want {
		t.Errorf("ctlError = %q, want %q", got, want)
	}
	if got := ctlError("403 Forbidden", []byte("forbidden\n")).Error(); got != "403 Forbidden: forbidden" {
		t.Errorf("ctlError = %q", got)
	}
}

// ctl knowngood answers what the tier knows of an address; ctl status
// counts the known-good addresses and networks.
func TestCtlKnownGood(t *testing.T) {
	d := startDaemon(t, "[limits.known_good]\nmin_users = 1\n", nil, nil)
	const office = "127.0.31.7"
	if out := d.ctl("knowngood", office); !strings.Contains(out, office+" ") || !strings.Contains(out, "not known-good: 0 of 1 users") {
		t.Fatalf("before a login: %q", out)
	}
	c, err := d.login(office, "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	out := d.ctl("knowngood", office)
	if !strings.Contains(out, office+" ") || !strings.Contains(out, "127.0.31.0/24") || strings.Count(out, "known-good until ") != 2 {
		t.Fatalf("after a login: %q", out)
	}
	if out := d.ctl("status"); !strings.Contains(out, "known-good   1 address, 1 network") {
		t.Fatalf("ctl status: %q", out)
	}
}

// A malformed -admin is an error an admin can read (it was a panic), and
// JSON on stdout with -json; a URL is refused with what to give instead.
func TestCtlBadAdminAddress(t *testing.T) {
	for _, addr := range []string{"bogus:addr:x", "bad addr", "http://127.0.0.1:9100"} {
		var stdout, stderr bytes.Buffer
		code := ctl([]string{"-json", "-admin", addr, "status"}, &stdout, &stderr)
		var failed struct {
			Error string `json:"error"`
		}
		if code != 1 || json.Unmarshal(stdout.Bytes(), &failed) != nil || !strings.Contains(failed.Error, "host:port or unix:/path") ||
			!strings.HasPrefix(stderr.String(), "imapgate ctl: ") {
			t.Errorf("-admin %q: exit %d, stdout %q, stderr %q", addr, code, stdout.String(), stderr.String())
		}
	}
}

// The commands ctl accepts are those its usage lists.
func TestCtlCommandsAreTheUsages(t *testing.T) {
	want := []string{"status", "top", "conns", "kill", "bans", "ban", "unban", "knowngood", "reload", "reopen-logs"}
	if got := ctlCommands(); !slices.Equal(got, want) {
		t.Errorf("ctlCommands() = %v, want %v", got, want)
	}
}

// A usage mistake prints the usage once and exits 2 (-h, which asks for
// it, exits 0); an unknown command is named first, with the command it may
// be a typo of. None of them reads a configuration or connects.
func TestCtlUsageMistakes(t *testing.T) {
	tests := []struct {
		args      []string
		firstLine string // "" when the usage comes first
	}{
		{[]string{"-h"}, ""},
		{[]string{"-help"}, ""},
		{nil, ""},
		{[]string{"-bogus", "status"}, "flag provided but not defined: -bogus"},
		{[]string{"-config", "/nonexistent", "bogus"}, `imapgate ctl: unknown command "bogus"`},
		{[]string{"stauts"}, `imapgate ctl: unknown command "stauts" (did you mean status?)`},
		{[]string{"reopen-log"}, `imapgate ctl: unknown command "reopen-log" (did you mean reopen-logs?)`},
		// A command's own arguments are checked before anything is sent.
		{[]string{"ban"}, "imapgate ctl: ban: takes an address or CIDR, optionally a duration (10m) and a user"},
		{[]string{"ban", "192.0.2.7", "soon"}, `imapgate ctl: ban: "soon" is not a duration (10m, 2h)`},
		{[]string{"unban"}, "imapgate ctl: unban: takes an address or CIDR, and optionally a user"},
		{[]string{"kill"}, "imapgate ctl: kill: takes one connection id or address (see ctl conns)"},
		{[]string{"kill", "1", "2"}, "imapgate ctl: kill: takes one connection id or address (see ctl conns)"},
		{[]string{"kill", "bob"}, `imapgate ctl: kill: "bob" is neither a connection id nor an address`},
		{[]string{"top", "x"}, `imapgate ctl: top: "x" is not a count (top 20)`},
		{[]string{"knowngood"}, "imapgate ctl: knowngood: takes one address (its network is shown with it)"},
		{[]string{"status", "now"}, "imapgate ctl: status: takes no arguments"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := ctl(tt.args, &stdout, &stderr)
		first, _, _ := strings.Cut(stderr.String(), "\n")
		want := 2
		if len(tt.args) == 1 && (tt.args[0] == "-h" || tt.args[0] == "-help") {
			want = 0
		}
		if code != want || stdout.Len() != 0 || strings.Count(stderr.String(), "usage: imapgate ctl") != 1 ||
			(tt.firstLine == "" && !strings.HasPrefix(first, "usage:")) || (tt.firstLine != "" && first != tt.firstLine) {
			t.Errorf("ctl %q: exit %d, stdout %q, stderr %q; want exit %d, the usage once, first line %q", tt.args, code, stdout.String(), stderr.String(), want, tt.firstLine)
		}
	}
}

// Without -admin, ctl takes admin.address from -config's file, by default
// defaultConfigFile, or the built-in address when that file does not
// exist; an error that cannot reach it names the address, where it came
// from, and how to choose another.
func TestCtlAdminAddressFromConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "imapgate.toml")
	sock := "unix:" + filepath.Join(dir, "gone.sock")
	os.WriteFile(file, []byte("[admin]\naddress = \""+sock+"\"\n"), 0o644)
	off := filepath.Join(dir, "off.toml")
	os.WriteFile(off, []byte("[admin]\naddress = \"\"\n"), 0o644)
	saved := defaultConfigFile
	t.Cleanup(func() { defaultConfigFile = saved })
	defaultConfigFile = file

	for _, args := range [][]string{{"status"}, {"-config", file, "status"}} {
		var stdout, stderr bytes.Buffer
		code := ctl(args, &stdout, &stderr)
		if want := "at " + sock + " (admin.address in " + file + "): "; code != 1 || !strings.Contains(stderr.String(), want) ||
			!strings.Contains(stderr.String(), "-admin host:port or unix:/path, or -config FILE") {
			t.Errorf("ctl %q: exit %d, stderr %q; want exit 1 and %q", args, code, stderr.String(), want)
		}
	}
	missing := filepath.Join(dir, "missing.toml")
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-config", missing, "status"}, "no such file or directory (-admin ADDR skips the file)"},
		{[]string{"-config", off, "status"}, off + ": admin.address is empty: the admin endpoint is off"},
	} {
		var stdout, stderr bytes.Buffer
		if code := ctl(tt.args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), tt.msg) {
			t.Errorf("ctl %q: exit %d, stderr %q; want exit 1 and %q", tt.args, code, stderr.String(), tt.msg)
		}
	}

	// The default file missing: the built-in address (not dialled here:
	// another imapgate may be listening on it).
	ep, err := findAdmin("", missing, false)
	if err != nil || ep.addr != "127.0.0.1:9100" || ep.from != "the default address: "+missing+" does not exist" {
		t.Errorf("default file missing: %+v, %v", ep, err)
	}
	if ep, err := findAdmin("unix:/run/x.sock", missing, true); err != nil || ep != (adminEndpoint{"unix:/run/x.sock", "-admin"}) {
		t.Errorf("-admin: %+v, %v", ep, err)
	}
}

// ctl status tells a node that stopped renewing its liveness (killed, or
// cut off from Redis) from a live one, while its share still counts: it
// is silent after three missed heartbeats, dead once node_ttl ran out.
func TestCtlNodeLife(t *testing.T) {
	ttl, beat := 15*time.Second, 500*time.Millisecond
	for _, c := range []struct {
		n    cluster.NodeStatus
		want string
	}{
		{cluster.NodeStatus{Alive: true, Expires: 14800 * time.Millisecond}, "alive (15s left)"},
		{cluster.NodeStatus{Alive: true, Expires: 13600 * time.Millisecond}, "alive (14s left)"}, // 1.4 s: a late beat
		{cluster.NodeStatus{Alive: true, Expires: 9 * time.Second}, "SILENT for 6s (counted until dead in 9s)"},
		{cluster.NodeStatus{Alive: false, Expires: -2 * time.Second}, "DEAD for 2s"},
	} {
		if got := nodeLife(c.n, ttl, beat); got != c.want {
			t.Errorf("nodeLife(%+v) = %q, want %q", c.n, got, c.want)
		}
	}
	// A node too old to send its ttl and interval: alive as before.
	if got := nodeLife(cluster.NodeStatus{Alive: true, Expires: time.Second}, 0, 0); got != "alive (1s left)" {
		t.Errorf("without ttl: %q", got)
	}
}
