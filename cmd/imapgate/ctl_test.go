package main

import "testing"

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
