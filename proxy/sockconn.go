package proxy

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockConn is a TCP connection whose reads and writes are made with
// RawSyscall through the socket's own poller registration, so they still
// wait on Go's netpoller and honour deadlines.
//
// Why: a system call made the ordinary way tells the scheduler it may
// block, and the first one after the process was idle wakes the runtime's
// monitor thread, which then polls every 20 µs for a while and sleeps
// again. A proxy that idles between short bursts (a handshake, a LOGIN)
// paid that on every burst. Socket reads and writes here are
// non-blocking, so they return at once and need none of it.
//
// An accepted socket is owned through an *os.File (newAcceptedConn): that
// registers it with the poller in two system calls, where net.FileConn
// takes fifteen (a dup, address lookups, keepalive defaults we override).
// A dialled one keeps its *net.TCPConn (newSockConn).
type sockConn struct {
	owner         socketOwner
	rc            syscall.RawConn
	local, remote netip.AddrPort // net.Addrs are made on demand: they are rarely asked for
	closed        atomic.Bool
	rd, wr        ioOp
}

func (c *sockConn) init() *sockConn {
	c.rd.call = c.rd.readOnce
	c.wr.call = c.wr.writeAll
	return c
}

// socketOwner is what *os.File and *net.TCPConn both offer.
type socketOwner interface {
	Close() error
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	SyscallConn() (syscall.RawConn, error)
}

// newSockConn wraps a dialled tc.
func newSockConn(tc *net.TCPConn) (*sockConn, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return (&sockConn{owner: tc, rc: rc, local: addrPortOf(tc.LocalAddr()), remote: addrPortOf(tc.RemoteAddr())}).init(), nil
}

// newAcceptedConn takes ownership of fd, a non-blocking socket just
// accepted from remote on local, and sets TCP_NODELAY: IMAP is small
// writes that must not wait for acknowledgements.
func newAcceptedConn(fd int, local, remote netip.AddrPort) (*sockConn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := (&sockConn{owner: f, rc: rc, local: local, remote: remote}).init()
	if err := c.setInt(syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

func (c *sockConn) LocalAddr() net.Addr                { return net.TCPAddrFromAddrPort(c.local) }
func (c *sockConn) RemoteAddr() net.Addr               { return net.TCPAddrFromAddrPort(c.remote) }
func (c *sockConn) SetDeadline(t time.Time) error      { return c.owner.SetDeadline(t) }
func (c *sockConn) SetReadDeadline(t time.Time) error  { return c.owner.SetReadDeadline(t) }
func (c *sockConn) SetWriteDeadline(t time.Time) error { return c.owner.SetWriteDeadline(t) }
func (c *sockConn) SyscallConn() (syscall.RawConn, error) {
	return c.rc, nil
}

func (c *sockConn) Close() error {
	c.closed.Store(true)
	if err := c.owner.Close(); err != nil {
		return c.opError("close", err)
	}
	return nil
}

// ioOp is one direction's state for the RawConn callback, kept in the
// conn with the callback bound once, so a Read or Write allocates nothing.
// Its mutex serialises callers of that direction (net.Conn allows
// concurrent Reads; the poller's own lock is taken only inside rc.Read).
type ioOp struct {
	mu    sync.Mutex
	p     []byte
	done  int
	errno syscall.Errno
	call  func(fd uintptr) bool
}

func (c *sockConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, errno, err := c.rd.run(c.rc, p, false)
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

// run makes op's system calls on p through the poller: rc.Write when
// write, else rc.Read.
func (op *ioOp) run(rc syscall.RawConn, p []byte, write bool) (n int, errno syscall.Errno, err error) {
	op.mu.Lock()
	defer op.mu.Unlock()
	op.p, op.done, op.errno = p, 0, 0
	if write {
		err = rc.Write(op.call)
	} else {
		err = rc.Read(op.call)
	}
	n, errno = op.done, op.errno
	op.p = nil
	return n, errno, err
}

// readOnce is rd's callback: one read, or false to wait for the poller.
func (op *ioOp) readOnce(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&op.p[0])), uintptr(len(op.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		op.done, op.errno = int(r), e
		return true
	}
}

func (c *sockConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, errno, err := c.wr.run(c.rc, p, true)
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", errno)
	}
	return n, nil
}

// writeAll is wr's callback: write until done, or false to wait for the
// poller when the socket buffer is full.
func (op *ioOp) writeAll(fd uintptr) bool {
	for op.done < len(op.p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&op.p[op.done])), uintptr(len(op.p)-op.done))
		switch e {
		case 0:
			op.done += int(r)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		op.errno = e
		return true
	}
	return true
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

// SetKeepAliveConfig sets keepalive with raw setsockopt calls; a zero
// field keeps the kernel's default.
func (c *sockConn) SetKeepAliveConfig(k net.KeepAliveConfig) error {
	if !k.Enable {
		return c.setInt(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 0)
	}
	if err := c.setInt(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1); err != nil {
		return err
	}
	for _, o := range [...]struct{ name, value int }{
		{syscall.TCP_KEEPIDLE, int(k.Idle / time.Second)},
		{syscall.TCP_KEEPINTVL, int(k.Interval / time.Second)},
		{syscall.TCP_KEEPCNT, k.Count},
	} {
		if o.value <= 0 {
			continue
		}
		if err := c.setInt(syscall.IPPROTO_TCP, o.name, o.value); err != nil {
			return err
		}
	}
	return nil
}

func (c *sockConn) setInt(level, name, value int) error {
	v := int32(value)
	var errno syscall.Errno
	if err := c.rc.Control(func(fd uintptr) {
		_, _, errno = syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(name),
			uintptr(unsafe.Pointer(&v)), 4, 0)
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
	if c.closed.Load() {
		// An *os.File owner reports its own "use of closed file";
		// callers test for net.ErrClosed.
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// waitFirstRecord waits until c's client has sent a complete TLS record
// (RFC 8446 §5.1: a 5-byte header with the length, and that many bytes),
// without reading it: the header is peeked (MSG_PEEK), the bytes queued
// counted (SIOCINQ). It returns the bytes waiting, or 0 if the client
// closed or reset first. The wait ends with an error at c's read deadline
// (a kill sets it in the past). A conn that is not a plain socket (a
// PROXY-wrapped one may hold bytes of its own) is not waited for: it
// returns -1, nil at once, and the handshake's framing decides.
func waitFirstRecord(c net.Conn) (int, error) {
	sc, ok := c.(*sockConn)
	if !ok {
		return -1, nil
	}
	var hdr [5]byte
	var n int
	err := sc.rc.Read(func(fd uintptr) bool {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&hdr[0])), uintptr(len(hdr)),
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch {
		case e == syscall.EAGAIN || e == syscall.EINTR:
			return false
		case e != 0 || r == 0:
			return true // reset or closed: n stays 0
		case r < uintptr(len(hdr)):
			return false // the header is not all here: wait for more
		}
		var queued int32
		if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&queued))); e != 0 {
			return true // cannot tell: let the handshake find out
		}
		if int(queued) < len(hdr)+(int(hdr[3])<<8|int(hdr[4])) {
			return false // half a record: wait for the rest
		}
		n = int(queued)
		return true
	})
	if err != nil {
		return 0, sc.opError("read", err)
	}
	return n, nil
}
