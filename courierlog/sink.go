package courierlog

import (
	"bufio"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"strings"
	"sync"
	"time"
)

// FlushInterval is how long a line may wait in LineSink's buffer. Lines
// are written in batches so a busy proxy makes one write per interval
// instead of one per line; fail2ban and log readers see them this much later.
const FlushInterval = 100 * time.Millisecond

// LineSink writes lines in syslog's traditional file format
// ("Nov 22 04:23:47 host imapd-ssl: message"), the format
// RSYSLOG_TraditionalFileFormat gives mail.log, so log tools and fail2ban
// read the file directly. It serves [log] output = "stderr" and "file:/path".
// Lines are buffered for at most FlushInterval; Close flushes.
type LineSink struct {
	mu    sync.Mutex
	w     io.Writer
	bw    *bufio.Writer
	armed bool   // a flush is scheduled
	path  string // non-empty for files, so Reopen can follow log rotation
	host  string
	tag   string
	now   func() time.Time
	buf   []byte
}

// NewLineSink writes to w with the given host name and tag.
func NewLineSink(w io.Writer, host, tag string) *LineSink {
	return &LineSink{w: w, bw: bufio.NewWriterSize(w, 32<<10), host: host, tag: tag, now: time.Now}
}

// Flush writes buffered lines out now.
func (s *LineSink) Flush() {
	s.mu.Lock()
	s.bw.Flush()
	s.armed = false
	s.mu.Unlock()
}

// Close flushes and closes a file sink.
func (s *LineSink) Close() error {
	s.Flush()
	if c, ok := s.w.(io.Closer); ok && s.path != "" {
		return c.Close()
	}
	return nil
}

// OpenFile opens (creating, appending) path for a LineSink.
func OpenFile(path, host, tag string) (*LineSink, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	s := NewLineSink(f, host, tag)
	s.path = path
	return s, nil
}

// Reopen reopens a file sink (after logrotate moved the file); other sinks
// ignore it.
func (s *LineSink) Reopen() error {
	if s.path == "" {
		return nil
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("reopen log file: %w", err)
	}
	s.mu.Lock()
	s.bw.Flush()
	old := s.w
	s.w = f
	s.bw.Reset(f)
	s.mu.Unlock()
	if c, ok := old.(io.Closer); ok {
		c.Close()
	}
	return nil
}

// SetClock replaces the time source (tests).
func (s *LineSink) SetClock(now func() time.Time) { s.now = now }

func (s *LineSink) Write(_ Priority, msg []byte) {
	s.mu.Lock()
	b := s.now().AppendFormat(s.buf[:0], time.Stamp)
	b = append(b, ' ')
	b = append(b, s.host...)
	b = append(b, ' ')
	b = append(b, s.tag...)
	b = append(b, ": "...)
	b = append(b, msg...)
	b = append(b, '\n')
	s.bw.Write(b)
	s.buf = b
	if !s.armed {
		s.armed = true
		time.AfterFunc(FlushInterval, s.Flush)
	}
	s.mu.Unlock()
}

// SyslogSink sends lines to the local syslog daemon (facility mail, no pid
// in the tag, as courierlogger does).
type SyslogSink struct{ w *syslog.Writer }

// DialSyslog connects to the local syslog socket.
func DialSyslog(tag string) (*SyslogSink, error) {
	w, err := syslog.New(syslog.LOG_MAIL|syslog.LOG_INFO, tag)
	if err != nil {
		return nil, fmt.Errorf("connect to syslog (is a syslog daemon running on /dev/log?): %w", err)
	}
	return &SyslogSink{w: w}, nil
}

func (s *SyslogSink) Write(p Priority, msg []byte) {
	m := string(msg)
	switch p {
	case Alert:
		s.w.Alert(m)
	case Crit:
		s.w.Crit(m)
	case Err:
		s.w.Err(m)
	case Warning:
		s.w.Warning(m)
	case Debug:
		s.w.Debug(m)
	default:
		s.w.Info(m)
	}
}

// Memory keeps lines in memory; tests read them.
type Memory struct {
	mu    sync.Mutex
	lines []string
}

func (m *Memory) Write(p Priority, msg []byte) {
	m.mu.Lock()
	m.lines = append(m.lines, p.String()+" "+string(msg))
	m.mu.Unlock()
}

// Lines returns "priority message" for each line so far.
func (m *Memory) Lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// Contains reports whether some line contains sub.
func (m *Memory) Contains(sub string) bool {
	for _, l := range m.Lines() {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}
