package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// sockConn is a TCP connection whose reads and writes are made with
// RawSyscall through the connection's own poller registration, so they
// still wait on Go's netpoller and honour deadlines.
//
// Why: a system call made the ordinary way tells the scheduler it may
// block, and the first one after the process was idle wakes the runtime's
// monitor thread, which then polls every 20 µs for a while and sleeps
// again. A proxy that idles between short bursts (a handshake, a LOGIN)
// paid that on every burst. Socket reads and writes here are
// non-blocking, so they return at once and need none of it.
//
// Everything else (deadlines, Close, CloseWrite, keepalive, SyscallConn)
// is the embedded TCPConn's.
type sockConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// newSockConn wraps tc; if its RawConn is unavailable tc is returned as is.
func newSockConn(tc *net.TCPConn) net.Conn {
	rc, err := tc.SyscallConn()
	if err != nil {
		return tc
	}
	return &sockConn{TCPConn: tc, rc: rc}
}

func (c *sockConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *sockConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var done int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			switch e {
			case 0:
				done += int(r)
				continue
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			errno = e
			return true
		}
		return true
	})
	switch {
	case err != nil:
		return done, c.opError("write", err)
	case errno != 0:
		return done, c.opError("write", errno)
	}
	return done, nil
}

// CloseWrite shuts down the sending side (raw, like Read and Write).
func (c *sockConn) CloseWrite() error {
	var errno syscall.Errno
	if err := c.rc.Control(func(fd uintptr) {
		_, _, errno = syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, syscall.SHUT_WR, 0)
	}); err != nil {
		return c.opError("close", err)
	}
	if errno != 0 {
		return c.opError("close", errno)
	}
	return nil
}

// SetKeepAliveConfig is net.TCPConn's for an enabled config with every
// field set, made with raw setsockopt calls.
func (c *sockConn) SetKeepAliveConfig(k net.KeepAliveConfig) error {
	if !k.Enable || k.Idle <= 0 || k.Interval <= 0 || k.Count <= 0 {
		return c.TCPConn.SetKeepAliveConfig(k)
	}
	opts := [...]struct{ level, name, value int }{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(k.Idle.Seconds())},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(k.Interval.Seconds())},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, k.Count},
	}
	var errno syscall.Errno
	if err := c.rc.Control(func(fd uintptr) {
		for _, o := range opts {
			v := int32(o.value)
			if _, _, errno = syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(o.level), uintptr(o.name),
				uintptr(unsafe.Pointer(&v)), 4, 0); errno != 0 {
				return
			}
		}
	}); err != nil {
		return c.opError("set", err)
	}
	if errno != 0 {
		return c.opError("set", errno)
	}
	return nil
}

// opError wraps err as net.TCPConn would, so that callers (crypto/tls
// among them) see a net.Error: a timeout stays a temporary error the
// connection survives.
func (c *sockConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// tcpConnOf returns the TCPConn under c, wrapped or not.
func tcpConnOf(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *sockConn:
		return c.TCPConn, true
	}
	return nil, false
}
