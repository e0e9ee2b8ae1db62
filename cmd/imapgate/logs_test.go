package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// syncBuffer collects a child's stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// failLogin makes one LOGIN with a wrong password from src.
func (d *daemon) failLogin(src, user string) {
	d.t.Helper()
	if c, err := d.login(src, user, "wrong"); err == nil {
		c.Close()
		d.t.Fatalf("%s logged in with a wrong password", user)
	}
}

// loginLogout logs in and out from src.
func (d *daemon) loginLogout(src string) {
	d.t.Helper()
	c, err := d.login(src, "demo", "demo")
	if err != nil {
		d.t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func waitFile(t *testing.T, path, sub string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if strings.Contains(readFile(path), sub) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %q in %s:\n%s", sub, path, readFile(path))
}

// logrotate's way: move the file, then SIGUSR1 (or ctl reopen-logs).
// Lines written between the two land in the moved file, later ones in a
// new file; no line is lost or written twice. SIGHUP reopens as well, even
// when the configuration it reloads is broken.
func TestLogFileRotation(t *testing.T) {
	d := startDaemon(t, "", nil, nil)
	d.failLogin("127.0.24.1", "demo")
	d.waitLine("ip=[::ffff:127.0.24.1]")

	os.Rename(d.log, d.log+".1")
	d.failLogin("127.0.24.2", "demo")
	waitFile(t, d.log+".1", "ip=[::ffff:127.0.24.2]")
	d.cmd.Process.Signal(syscall.SIGUSR1)
	d.waitLine("imapgate: log file " + d.log + " reopened")
	d.failLogin("127.0.24.3", "demo")
	d.waitLine("ip=[::ffff:127.0.24.3]")

	os.Rename(d.log, d.log+".2")
	if out := d.ctl("reopen-logs"); out != "reopened: true\n" {
		t.Errorf("ctl reopen-logs printed %q", out)
	}
	d.failLogin("127.0.24.4", "demo")
	d.waitLine("ip=[::ffff:127.0.24.4]")

	cfg := filepath.Join(d.dir, "imapgate.toml")
	good := readFile(cfg)
	os.WriteFile(cfg, []byte(good+"[limits]\nmax_per_ipp = 1\n"), 0o644)
	os.Rename(d.log, d.log+".3")
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLine("reload failed, keeping the running configuration")
	d.failLogin("127.0.24.5", "demo")
	d.waitLine("ip=[::ffff:127.0.24.5]")

	want := map[string][]string{
		d.log + ".1": {"127.0.24.1", "127.0.24.2"},
		d.log + ".2": {"127.0.24.3"},
		d.log + ".3": {"127.0.24.4"},
		d.log:        {"127.0.24.5"},
	}
	for file, addrs := range want {
		var got []string
		for _, l := range strings.Split(readFile(file), "\n") {
			if _, rest, ok := strings.Cut(l, "LOGIN FAILED, user=demo, ip=[::ffff:"); ok {
				got = append(got, rest[:strings.IndexByte(rest, ']')])
			}
		}
		if strings.Join(got, " ") != strings.Join(addrs, " ") {
			t.Errorf("%s has failures from %q, want %q:\n%s", filepath.Base(file), got, addrs, readFile(file))
		}
	}
	if !strings.Contains(readFile(d.log), "reopened") {
		t.Errorf("SIGHUP with a broken file did not reopen the log:\n%s", readFile(d.log))
	}
}

// A file that cannot be written (a full disk: /dev/full) loses no line:
// they go to stderr, and the drop counter counts them.
func TestLogFileFullDisk(t *testing.T) {
	d := newDaemon(t)
	stderr := &syncBuffer{}
	d.text = stderr.String
	d.start("[log]\noutput = \"file:/dev/full\"\n", nil, func(cmd *exec.Cmd) { cmd.Stderr = stderr })
	d.failLogin("127.0.25.1", "demo")
	d.waitLine("imapd-ssl: LOGIN FAILED, user=demo, ip=[::ffff:127.0.25.1]")
	if !strings.Contains(stderr.String(), "imapgate: log /dev/full: write /dev/full: no space left on device; lines go to stderr") {
		t.Errorf("stderr does not say why:\n%s", stderr.String())
	}
	if n := d.metric(`imapgate_log_lines_dropped_total{output="file"}`); n < 2 {
		t.Errorf("file drops counted: %v, want at least 2", n)
	}
}

// Under systemd's StandardError=journal (JOURNAL_STREAM names stderr),
// lines are bare messages with sd-daemon priority prefixes; with the
// variable inherited but stderr elsewhere, they keep the file format.
func TestStderrUnderJournald(t *testing.T) {
	for _, match := range []bool{true, false} {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		ours, theirs := os.NewFile(uintptr(fds[0]), "journal"), os.NewFile(uintptr(fds[1]), "stderr")
		var st unix.Stat_t
		unix.Fstat(fds[1], &st)
		stream := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
		if !match {
			stream = fmt.Sprintf("%d:%d", st.Dev, st.Ino+1)
		}
		var lines []string
		var mu sync.Mutex
		go func() {
			sc := bufio.NewScanner(ours)
			for sc.Scan() {
				mu.Lock()
				lines = append(lines, sc.Text())
				mu.Unlock()
			}
		}()
		d := newDaemon(t)
		d.text = func() string { mu.Lock(); defer mu.Unlock(); return strings.Join(lines, "\n") }
		d.start("[log]\noutput = \"stderr\"\n", nil, func(cmd *exec.Cmd) {
			cmd.Stderr = theirs
			cmd.Env = append(os.Environ(), "JOURNAL_STREAM="+stream)
		})
		theirs.Close()
		d.failLogin("127.0.26.1", "demo")
		d.waitLine("LOGIN FAILED, user=demo, ip=[::ffff:127.0.26.1]")
		d.cmd.Process.Kill()
		ours.Close()
		wantJournal := regexp.MustCompile(`(?m)^<6>LOGIN FAILED, user=demo, ip=\[::ffff:127\.0\.26\.1\], port=\[\d+\]$`)
		wantFile := regexp.MustCompile(`(?m)^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ imapd-ssl: LOGIN FAILED, user=demo, ip=\[::ffff:127\.0\.26\.1\], port=\[\d+\]$`)
		if want := map[bool]*regexp.Regexp{true: wantJournal, false: wantFile}[match]; !want.MatchString(d.logText()) {
			t.Errorf("journal stream %v: want a line matching %s, got\n%s", match, want, d.logText())
		}
	}
}
