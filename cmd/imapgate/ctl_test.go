package main

import (
	"strings"
	"testing"
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
