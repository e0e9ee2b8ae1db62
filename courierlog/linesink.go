package courierlog

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// LineSink writes one line per message to a stream: a file or stderr.
//
// In syslog's traditional file format ("Nov 22 04:23:47 host imapd-ssl:
// message", what RSYSLOG_TraditionalFileFormat gives mail.log) fail2ban and
// log tools read the lines directly: [log] output = "file:/path", and
// "stderr" on a terminal or a pipe. In journal format ("<6>message", the
// sd-daemon priority prefix) journald takes the priority from the prefix
// and adds time, host, identifier and facility itself from the unit
// (SyslogIdentifier=, SyslogFacility=): "stderr" when stderr is a journal
// stream.
//
// Lines are buffered for at most FlushInterval; Close flushes. Lines that
// a write fails for (a full disk) are counted (Dropped) and handed to the
// fallback sink.
type LineSink struct {
	mu       sync.Mutex
	w        io.Writer
	path     string // non-empty for files, so Reopen can follow log rotation
	journal  bool
	host     string
	tag      string
	now      func() time.Time
	fallback Sink
	q        pending
	partial  bool   // a failed write stopped inside a line
	failing  bool   // the last write failed
	lost     uint64 // lines handed to the fallback since it started failing
	dropped  atomic.Uint64
}

// NewLineSink writes to w in syslog file format with the given host name
// and tag.
func NewLineSink(w io.Writer, host, tag string) *LineSink {
	return &LineSink{w: w, host: host, tag: tag, now: time.Now, fallback: Discard}
}

// NewJournalSink writes to w, a journal stream, in journal format.
func NewJournalSink(w io.Writer) *LineSink {
	return &LineSink{w: w, journal: true, now: time.Now, fallback: Discard}
}

// OpenFile opens (creating, appending) path for a LineSink in syslog file
// format.
func OpenFile(path, host, tag string) (*LineSink, error) {
	f, err := openAppend(path)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	s := NewLineSink(f, host, tag)
	s.path = path
	return s, nil
}

func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// SetFallback sets where lines go that cannot be written (default:
// nowhere); call it before the first Write.
func (s *LineSink) SetFallback(f Sink) { s.fallback = f }

// SetClock replaces the time source (tests).
func (s *LineSink) SetClock(now func() time.Time) { s.now = now }

// Dropped counts the lines a write failed for.
func (s *LineSink) Dropped() uint64 { return s.dropped.Load() }

func (s *LineSink) Write(p Priority, msg []byte) {
	s.mu.Lock()
	s.appendLocked(p, msg)
	s.mu.Unlock()
}

func (s *LineSink) appendLocked(p Priority, msg []byte) {
	start := len(s.q.b)
	if s.journal {
		s.q.b = append(s.q.b, '<', '0'+byte(p&7), '>')
	} else {
		s.q.b = s.now().AppendFormat(s.q.b, time.Stamp)
		s.q.b = append(s.q.b, ' ')
		s.q.b = append(s.q.b, s.host...)
		s.q.b = append(s.q.b, ' ')
		s.q.b = append(s.q.b, s.tag...)
		s.q.b = append(s.q.b, ": "...)
	}
	s.q.add(p, start, msg, '\n')
	if s.q.added(s.Flush) {
		s.flushLocked()
	}
}

// Flush writes buffered lines out now.
func (s *LineSink) Flush() {
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
}

var newline = []byte{'\n'}

func (s *LineSink) flushLocked() {
	s.q.flushed()
	if len(s.q.lines) == 0 {
		return
	}
	if s.partial {
		// End the line a failed write cut, so the next one starts clean.
		if _, err := s.w.Write(newline); err == nil {
			s.partial = false
		}
	}
	n, err := s.w.Write(s.q.b)
	if err != nil {
		s.failed(n, err)
		s.q.reset()
		return
	}
	s.q.reset()
	if s.failing {
		s.failing = false
		s.appendLocked(Warning, fmt.Appendf(nil, "imapgate: log %s written again; %d lines %s meanwhile", s.name(), s.lost, wentTo(s.fallback)))
		s.lost = 0
	}
}

// failed hands the lines a write did not finish (n bytes went out) to the
// fallback; the first failure of a run says why.
func (s *LineSink) failed(n int, err error) {
	i := 0
	for i < len(s.q.lines) && s.q.lines[i].end <= n {
		i++
	}
	if i < len(s.q.lines) && s.q.lines[i].start < n {
		s.partial = true
	}
	if !s.failing {
		s.failing = true
		s.fallback.Write(Err, fmt.Appendf(nil, "imapgate: log %s: %v; lines go to stderr until it takes them again", s.name(), err))
	}
	k := uint64(s.q.spill(i, s.fallback))
	s.lost += k
	s.dropped.Add(k)
}

func (s *LineSink) name() string {
	if s.path != "" {
		return s.path
	}
	return "stderr"
}

// Reopen reopens a file sink (after logrotate moved the file): lines
// buffered so far go to the old file, later ones to the new. Other sinks
// ignore it. If the file cannot be opened the old one stays.
func (s *LineSink) Reopen() error {
	if s.path == "" {
		return nil
	}
	f, err := openAppend(s.path)
	if err != nil {
		return fmt.Errorf("reopen log file: %w", err)
	}
	s.mu.Lock()
	s.flushLocked()
	old := s.w
	s.w = f
	s.partial = false
	s.mu.Unlock()
	if c, ok := old.(io.Closer); ok {
		c.Close()
	}
	return nil
}

// Close flushes and closes a file sink.
func (s *LineSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.q.lines) > 0 { // twice at most: a flush may add the line saying what was missed
		s.flushLocked()
	}
	if c, ok := s.w.(io.Closer); ok && s.path != "" {
		return c.Close()
	}
	return nil
}
