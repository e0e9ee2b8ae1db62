package courierlog

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var testTime = time.Date(2026, 11, 2, 4, 23, 47, 0, time.Local)

// Under journald: the sd-daemon priority prefix and the bare message;
// journald adds time, host, identifier and facility.
func TestJournalFormat(t *testing.T) {
	var buf bytes.Buffer
	s := NewJournalSink(&buf)
	l := New(s, Options{TLS: true})
	c := netip.MustParseAddrPort("192.0.2.7:43894")
	l.Connection(c)
	l.LoginFailed("testuser", c)
	l.MaxPerIP(c.Addr())
	s.Flush()
	want := "<7>Connection, ip=[::ffff:192.0.2.7], port=[43894]\n" +
		"<6>LOGIN FAILED, user=testuser, ip=[::ffff:192.0.2.7], port=[43894]\n" +
		"<1>Maximum connection limit reached for ::ffff:192.0.2.7\n"
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

// flakyWriter fails while full is set, after taking the first n bytes
// offered.
type flakyWriter struct {
	bytes.Buffer
	full bool
	n    int
}

func (w *flakyWriter) Write(b []byte) (int, error) {
	if w.full {
		k := min(w.n, len(b))
		w.Buffer.Write(b[:k])
		return k, errors.New("no space left on device")
	}
	return w.Buffer.Write(b)
}

// A write that fails (a full disk) loses no line: the lines it did not
// finish go to the fallback whole and are counted; the cut line is ended
// before the next write, and the file says how many lines it missed.
func TestFileWriteFailureFallsBack(t *testing.T) {
	w := &flakyWriter{full: true, n: 20}
	s := NewLineSink(w, "vm", "imapd-ssl")
	s.SetClock(func() time.Time { return testTime })
	fb := &Memory{}
	s.SetFallback(fb)
	s.Write(Info, []byte("LOGIN FAILED, user=a, ip=[::1], port=[1]"))
	s.Write(Debug, []byte("Connection, ip=[::1], port=[2]"))
	s.Flush()
	if got := s.Dropped(); got != 2 {
		t.Errorf("Dropped() = %d, want 2", got)
	}
	got := fb.Lines()
	if len(got) != 3 || !strings.Contains(got[0], "no space left on device") ||
		got[1] != "info LOGIN FAILED, user=a, ip=[::1], port=[1]" || got[2] != "debug Connection, ip=[::1], port=[2]" {
		t.Fatalf("fallback got %q", got)
	}
	w.full = false
	s.Write(Info, []byte("LOGOUT, ip=[::1], port=[3], rcvd=1, sent=2"))
	s.Flush()
	s.Flush() // the line saying what was missed
	want := "Nov  2 04:23:47 vm i\n" +
		"Nov  2 04:23:47 vm imapd-ssl: LOGOUT, ip=[::1], port=[3], rcvd=1, sent=2\n" +
		"Nov  2 04:23:47 vm imapd-ssl: imapgate: log stderr written again; 2 lines went to stderr meanwhile\n"
	if w.String() != want {
		t.Fatalf("file got\n%s\nwant\n%s", w.String(), want)
	}
}

// /dev/full is a full disk.
func TestFileOnFullDisk(t *testing.T) {
	s, err := OpenFile("/dev/full", "vm", "imapd-ssl")
	if err != nil {
		t.Skip(err)
	}
	defer s.Close()
	fb := &Memory{}
	s.SetFallback(fb)
	s.Write(Info, []byte("LOGIN FAILED, user=a, ip=[::1], port=[1]"))
	s.Flush()
	if s.Dropped() != 1 || !fb.Contains("info LOGIN FAILED, user=a") || !fb.Contains("/dev/full: write /dev/full: no space left on device") {
		t.Fatalf("dropped %d, fallback %q", s.Dropped(), fb.Lines())
	}
}

// logrotate moves the file, then Reopen: lines before go to the moved
// file, lines after to a new one, none lost.
func TestFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgate.log")
	s, err := OpenFile(path, "vm", "imapd-ssl")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetClock(func() time.Time { return testTime })
	stamp := testTime.Format(time.Stamp)
	s.Write(Info, []byte("one"))
	s.Flush()
	os.Rename(path, path+".1")
	s.Write(Info, []byte("two")) // still buffered: goes to the moved file
	if err := s.Reopen(); err != nil {
		t.Fatal(err)
	}
	s.Write(Info, []byte("three"))
	s.Flush()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(old), "imapd-ssl: one\n"+stamp+" vm imapd-ssl: two\n") ||
		string(cur) != stamp+" vm imapd-ssl: three\n" {
		t.Fatalf("moved file:\n%s\nnew file:\n%s", old, cur)
	}
}

// syslogServer listens on a unix datagram socket in dir.
func syslogServer(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readDatagram(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	b := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

// Exactly what glibc's syslog(3) sends for courierlogger: PRI with
// facility mail, the timestamp, the tag without a pid, the message.
func TestSyslogMessageFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	srv := syslogServer(t, path)
	s, err := DialSyslog(path, "imapd-ssl")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetClock(func() time.Time { return testTime })
	l := New(s, Options{TLS: true})
	c := netip.MustParseAddrPort("192.0.2.7:43894")
	l.LoginFailed("testuser", c)
	l.Connection(c)
	l.MaxPerIP(c.Addr())
	s.Flush()
	for _, want := range []string{
		"<22>Nov  2 04:23:47 imapd-ssl: LOGIN FAILED, user=testuser, ip=[::ffff:192.0.2.7], port=[43894]",
		"<23>Nov  2 04:23:47 imapd-ssl: Connection, ip=[::ffff:192.0.2.7], port=[43894]",
		"<17>Nov  2 04:23:47 imapd-ssl: Maximum connection limit reached for ::ffff:192.0.2.7",
	} {
		if got := readDatagram(t, srv); got != want {
			t.Errorf("got  %q\nwant %q", got, want)
		}
	}
}

// A daemon listening on a stream socket gets NUL-terminated messages, as
// from glibc.
func TestSyslogStreamSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s, err := DialSyslog(path, "imapd-ssl")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetClock(func() time.Time { return testTime })
	s.Write(Info, []byte("one"))
	s.Write(Info, []byte("two"))
	s.Flush()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := "<22>Nov  2 04:23:47 imapd-ssl: one\x00<22>Nov  2 04:23:47 imapd-ssl: two\x00"
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readFull(c, got); err != nil || string(got) != want {
		t.Fatalf("got %q (%v), want %q", got, err, want)
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// The daemon stops: lines go to the fallback and are counted; it comes
// back (a new socket at the same path): delivery resumes once the retry
// interval has passed, starting with how many lines it missed.
func TestSyslogDaemonRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	srv := syslogServer(t, path)
	s, err := DialSyslog(path, "imapd-ssl")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var now atomic.Int64 // the timer's flush may read it
	now.Store(testTime.UnixNano())
	s.SetClock(func() time.Time { return time.Unix(0, now.Load()) })
	fb := &Memory{}
	s.SetFallback(fb)

	s.Write(Info, []byte("before"))
	s.Flush()
	if got := readDatagram(t, srv); !strings.HasSuffix(got, "imapd-ssl: before") {
		t.Fatalf("got %q", got)
	}
	srv.Close()
	os.Remove(path)
	s.Write(Info, []byte("while down 1"))
	s.Flush()
	s.Write(Info, []byte("while down 2"))
	s.Flush()
	if s.Dropped() != 2 || !fb.Contains("info while down 1") || !fb.Contains("info while down 2") ||
		!strings.Contains(fb.Lines()[0], "lines go to stderr until it is back") {
		t.Fatalf("dropped %d, fallback %q", s.Dropped(), fb.Lines())
	}

	srv = syslogServer(t, path)
	s.Write(Info, []byte("within the retry interval"))
	s.Flush()
	if s.Dropped() != 3 {
		t.Fatalf("dropped %d, want 3: no connect before SyslogRetry", s.Dropped())
	}
	now.Add(int64(SyslogRetry))
	s.Write(Info, []byte("after"))
	s.Flush()
	s.Flush() // the line saying what was missed
	if got := readDatagram(t, srv); !strings.HasSuffix(got, "imapd-ssl: after") {
		t.Fatalf("got %q", got)
	}
	if got := readDatagram(t, srv); !strings.HasSuffix(got, "imapd-ssl: imapgate: syslog "+path+" reachable again; 3 lines went to stderr meanwhile") {
		t.Fatalf("got %q", got)
	}
}

// A restarted daemon has a new socket at the same path: the send that
// finds the old one dead connects again at once, losing nothing.
func TestSyslogReconnectsAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	srv := syslogServer(t, path)
	s, err := DialSyslog(path, "imapd-ssl")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv.Close()
	os.Remove(path)
	srv = syslogServer(t, path)
	s.Write(Info, []byte("after restart"))
	s.Flush()
	if got := readDatagram(t, srv); !strings.HasSuffix(got, "imapd-ssl: after restart") || s.Dropped() != 0 {
		t.Fatalf("got %q, dropped %d", got, s.Dropped())
	}
}
