package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"imapgate/config"
)

const rlimInfinity = math.MaxUint64 // RLIM_INFINITY on Linux

func TestOpenFilesArithmetic(t *testing.T) {
	for _, c := range []struct {
		soft, hard uint64
		max        int
		check      bool
		wantErr    string // substring; "" for no error
		wantShort  string // substring of the warning; "" for none
	}{
		{40, 40, 4096, true, "holds about 0 sessions, but table.max = 4096 needs 8256", ""},
		{40, 40, 4096, false, "", "open-file limit is 40 (hard 40): it holds about 0 sessions, but table.max = 4096 needs 8256 descriptors; starting anyway"},
		{64, 64, 1, true, "holds about 0 sessions", ""},
		{1024, 1048576, 4096, true, "holds about 480 sessions", ""},
		{8256, 8256, 4096, true, "", ""},
		{rlimInfinity, rlimInfinity, 4096, true, "", ""},
		{rlimInfinity, rlimInfinity, math.MaxInt, true, "", ""},
		{1 << 20, rlimInfinity, math.MaxInt, false, "", fmt.Sprintf("needs %d descriptors", uint64(math.MaxUint64))},
	} {
		cfg := config.Default()
		cfg.Table.Max, cfg.Limits.OpenFilesCheck = c.max, c.check
		of, err := assessOpenFiles(c.soft, c.hard, cfg, false)
		name := fmt.Sprintf("soft %d hard %d max %d check %v", c.soft, c.hard, c.max, c.check)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: err %v, want %q", name, err, c.wantErr)
		}
		if c.wantShort == "" && of.short != "" || !strings.Contains(of.short, c.wantShort) {
			t.Errorf("%s: warning %q, want %q", name, of.short, c.wantShort)
		}
	}
	if got := sessionsFitting(rlimInfinity); got != (rlimInfinity-fileMargin)/2 {
		t.Errorf("sessionsFitting(RLIM_INFINITY) = %d", got)
	}
	// The demo shrinks the table instead, to at least 16.
	cfg := config.Default()
	if _, err := assessOpenFiles(40, 40, cfg, true); err != nil || cfg.Table.Max != 16 {
		t.Errorf("demo at 40: err %v, table.max %d", err, cfg.Table.Max)
	}
}

// Under "ulimit -n 40" -check refuses with sane numbers, or, with
// open_files_check = false, passes and warns with them.
func TestCheckUnderTinyOpenFileLimit(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, filepath.Join(dir, "imapd.pem"), "nofile.example")
	for _, check := range []bool{true, false} {
		cfg := filepath.Join(dir, fmt.Sprintf("check-%v.toml", check))
		os.WriteFile(cfg, []byte(fmt.Sprintf("[tls]\ncert = %q\n[limits]\nopen_files_check = %v\n", filepath.Join(dir, "imapd.pem"), check)), 0o644)
		out, err := exec.Command("/bin/sh", "-c", `ulimit -n 40 && exec "$0" -check -config "$1"`, binary, cfg).CombinedOutput()
		want := "open-file limit is 40 (hard 40): it holds about 0 sessions, but table.max = 4096 needs 8256 descriptors"
		if !strings.Contains(string(out), want) {
			t.Errorf("open_files_check = %v: output lacks %q:\n%s", check, want, out)
		}
		if check && err == nil {
			t.Errorf("open_files_check = true: -check passed under ulimit -n 40:\n%s", out)
		}
		if !check && (err != nil || !strings.Contains(string(out), "imapgate: warning: open-file limit")) {
			t.Errorf("open_files_check = false: %v, want a warning and success:\n%s", err, out)
		}
	}
}
