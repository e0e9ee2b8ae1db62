package main

import (
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"imapgate/config"
	"imapgate/courierlog"
)

// logSinks is [log] output opened: the sink lines go to, and stderr, where
// lines go that the output could not take.
type logSinks struct {
	main   courierlog.Sink
	stderr *courierlog.LineSink
	output string // "stderr", "syslog" or "file": the metric's label
	where  string // the file or socket, for log lines about it
}

// droppers are the sinks that count lines they could not take.
type dropper interface{ Dropped() uint64 }

// openLog opens [log] output. Under systemd with StandardError=journal,
// stderr lines are bare messages with an sd-daemon priority prefix
// ("<6>LOGIN FAILED, …"): journald adds time, host, the unit's
// SyslogIdentifier and SyslogFacility. Elsewhere (a terminal, a pipe) they
// are in syslog file format, as file: lines are.
func openLog(l config.Log) (*logSinks, error) {
	host := l.Hostname
	if host == "" {
		host, _ = os.Hostname()
		host, _, _ = strings.Cut(host, ".")
	}
	s := &logSinks{output: "stderr"}
	if stderrIsJournal() {
		s.stderr = courierlog.NewJournalSink(os.Stderr)
	} else {
		s.stderr = courierlog.NewLineSink(os.Stderr, host, l.Tag)
	}
	s.main = s.stderr
	kind, path, _ := strings.Cut(l.Output, ":")
	switch kind {
	case "syslog":
		if path == "" {
			path = courierlog.DefaultSyslogPath
		}
		sys, err := courierlog.DialSyslog(path, l.Tag)
		if err != nil {
			return nil, err
		}
		sys.SetFallback(s.stderr)
		s.main, s.output, s.where = sys, "syslog", "syslog "+path
	case "file":
		f, err := courierlog.OpenFile(path, host, l.Tag)
		if err != nil {
			return nil, err
		}
		f.SetFallback(s.stderr)
		s.main, s.output, s.where = f, "file", "log file "+path
	}
	return s, nil
}

// Reopen reopens the log file (after logrotate moved it) or reconnects to
// syslog; for stderr it does nothing and says so with ok false.
func (s *logSinks) Reopen() (ok bool, err error) {
	r, ok := s.main.(interface{ Reopen() error })
	if !ok || s.output == "stderr" {
		return false, nil
	}
	return true, r.Reopen()
}

// Dropped reads, per output, how many lines it could not take.
func (s *logSinks) Dropped() map[string]func() uint64 {
	m := map[string]func() uint64{"stderr": s.stderr.Dropped}
	if d, ok := s.main.(dropper); ok && s.output != "stderr" {
		m[s.output] = d.Dropped
	}
	return m
}

// Close flushes buffered lines.
func (s *logSinks) Close() {
	if c, ok := s.main.(io.Closer); ok {
		c.Close()
	}
	s.stderr.Flush()
}

// stderrIsJournal reports whether stderr is the journal stream systemd
// connected it to (StandardError=journal).
func stderrIsJournal() bool {
	return isJournalStream(os.Getenv("JOURNAL_STREAM"), 2)
}

// isJournalStream compares JOURNAL_STREAM ("device:inode" of the stream
// systemd connected) with what fd is, as sd-daemon and go-systemd do: a
// process that inherited the variable but whose stderr was redirected is
// not fooled.
func isJournalStream(env string, fd int) bool {
	dev, ino, ok := strings.Cut(env, ":")
	if !ok {
		return false
	}
	d, err := strconv.ParseUint(dev, 10, 64)
	if err != nil {
		return false
	}
	i, err := strconv.ParseUint(ino, 10, 64)
	if err != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == d && uint64(st.Ino) == i
}
