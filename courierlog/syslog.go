package courierlog

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultSyslogPath is the local syslog socket.
const DefaultSyslogPath = "/dev/log"

// SyslogRetry is how long a SyslogSink waits after a failed connect before
// it tries again; lines meanwhile go to the fallback.
const SyslogRetry = time.Second

// syslogSendTimeout bounds one send, so a stalled syslog daemon holds log
// writers up this long at most before lines go to the fallback.
const syslogSendTimeout = time.Second

// logMail is syslog's mail facility, as courierlogger's LOG_MAIL.
const logMail = 2 << 3

// SyslogSink sends lines to the local syslog daemon as courierlogger does
// through glibc's syslog(3) after openlog(tag, LOG_NDELAY, LOG_MAIL): one
// RFC 3164 message per line, "<22>Nov 22 04:23:47 imapd-ssl: message" —
// facility mail, the tag without a pid, no host name (the daemon adds it) —
// over a unix datagram socket, or over a stream socket with each message
// ended by a NUL when the daemon listens on one (glibc's fallback).
//
// Lines are sent in batches every FlushInterval. When the daemon is gone
// or restarting, a failed send connects once more at once (a restarted
// daemon has a new socket at the same path) and after that at most every
// SyslogRetry; lines meanwhile are counted (Dropped) and handed to the
// fallback sink.
type SyslogSink struct {
	mu       sync.Mutex
	path     string
	tag      string
	now      func() time.Time
	fallback Sink
	q        pending
	conn     net.Conn
	stream   bool
	retryAt  time.Time // no connect before this, after one failed
	downErr  error     // why the last connect failed
	failing  bool      // lines are going to the fallback
	lost     uint64    // lines handed to the fallback since then
	dropped  atomic.Uint64
}

// DialSyslog connects to the syslog socket at path (DefaultSyslogPath
// unless the daemon listens elsewhere) for lines tagged tag.
func DialSyslog(path, tag string) (*SyslogSink, error) {
	s := &SyslogSink{path: path, tag: tag, now: time.Now, fallback: Discard}
	if err := s.dial(); err != nil {
		return nil, fmt.Errorf("connect to syslog (is a syslog daemon listening on %s?): %w", path, err)
	}
	return s, nil
}

// dial connects as glibc's openlog does: a datagram socket, or a stream
// socket if the daemon's socket is one.
func (s *SyslogSink) dial() error {
	c, err := net.Dial("unixgram", s.path)
	stream := false
	if errors.Is(err, syscall.EPROTOTYPE) {
		c, err = net.Dial("unix", s.path)
		stream = true
	}
	if err != nil {
		return err
	}
	s.conn, s.stream = c, stream
	return nil
}

// SetFallback sets where lines go that cannot be sent (default: nowhere);
// call it before the first Write.
func (s *SyslogSink) SetFallback(f Sink) { s.fallback = f }

// SetClock replaces the time source of timestamps and retries (tests).
func (s *SyslogSink) SetClock(now func() time.Time) { s.now = now }

// Dropped counts the lines that could not be sent.
func (s *SyslogSink) Dropped() uint64 { return s.dropped.Load() }

func (s *SyslogSink) Write(p Priority, msg []byte) {
	s.mu.Lock()
	s.appendLocked(p, msg)
	s.mu.Unlock()
}

func (s *SyslogSink) appendLocked(p Priority, msg []byte) {
	start := len(s.q.b)
	s.q.b = append(s.q.b, '<')
	s.q.b = strconv.AppendUint(s.q.b, uint64(logMail|p&7), 10)
	s.q.b = append(s.q.b, '>')
	s.q.b = s.now().AppendFormat(s.q.b, time.Stamp)
	s.q.b = append(s.q.b, ' ')
	s.q.b = append(s.q.b, s.tag...)
	s.q.b = append(s.q.b, ": "...)
	s.q.add(p, start, msg, 0)
	if s.q.added(s.Flush) {
		s.flushLocked()
	}
}

// Flush sends buffered lines now.
func (s *SyslogSink) Flush() {
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
}

func (s *SyslogSink) flushLocked() {
	s.q.flushed()
	sent := 0
	for _, l := range s.q.lines {
		if err := s.send(s.q.b[l.start:l.end]); err != nil {
			s.failed(sent, err)
			break
		}
		sent++
	}
	all := sent == len(s.q.lines)
	s.q.reset()
	if all && sent > 0 && s.failing {
		s.failing = false
		s.appendLocked(Warning, fmt.Appendf(nil, "imapgate: syslog %s reachable again; %d lines %s meanwhile", s.path, s.lost, wentTo(s.fallback)))
		s.lost = 0
	}
}

// send sends one framed message (ending in NUL).
func (s *SyslogSink) send(frame []byte) error {
	if s.conn == nil {
		if s.now().Before(s.retryAt) {
			return s.downErr
		}
		if err := s.redial(); err != nil {
			return err
		}
	}
	err := s.write(frame)
	if err == nil {
		return nil
	}
	s.conn.Close()
	s.conn = nil
	if os.IsTimeout(err) {
		s.retryAt, s.downErr = s.now().Add(SyslogRetry), err
		return err
	}
	// The daemon restarted (a new socket at the same path) or stopped:
	// connect once more, as glibc's syslog does.
	if err := s.redial(); err != nil {
		return err
	}
	if err = s.write(frame); err != nil {
		s.conn.Close()
		s.conn = nil
		s.retryAt, s.downErr = s.now().Add(SyslogRetry), err
	}
	return err
}

func (s *SyslogSink) redial() error {
	if err := s.dial(); err != nil {
		s.retryAt, s.downErr = s.now().Add(SyslogRetry), err
		return err
	}
	return nil
}

func (s *SyslogSink) write(frame []byte) error {
	if !s.stream {
		frame = frame[:len(frame)-1] // a datagram is the message
	}
	s.conn.SetWriteDeadline(time.Now().Add(syslogSendTimeout))
	_, err := s.conn.Write(frame)
	return err
}

// failed hands the lines from index i on to the fallback; the first
// failure of a run says why.
func (s *SyslogSink) failed(i int, err error) {
	if !s.failing {
		s.failing = true
		s.fallback.Write(Err, fmt.Appendf(nil, "imapgate: syslog %s: %v; lines go to stderr until it is back", s.path, err))
	}
	k := uint64(s.q.spill(i, s.fallback))
	s.lost += k
	s.dropped.Add(k)
}

// Reopen sends what is buffered and connects again (after the syslog
// daemon was restarted, without waiting for SyslogRetry).
func (s *SyslogSink) Reopen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	if err := s.redial(); err != nil {
		return fmt.Errorf("reconnect to syslog %s: %w", s.path, err)
	}
	return nil
}

// Close sends what is buffered and closes the connection.
func (s *SyslogSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.q.lines) > 0 { // twice at most: a flush may add the line saying what was missed
		s.flushLocked()
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	return nil
}
