//go:build linux && !imapgate_portable

package sock

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
)

// Conn is a TCP connection whose reads and writes are made with
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
// A dialled one keeps its *net.TCPConn (Dialed).
type Conn struct {
	owner         socketOwner
	rc            syscall.RawConn
	local, remote netip.AddrPort // net.Addrs are made on demand: they are rarely asked for
	closed        atomic.Bool
	rd, wr        ioOp
}

func (c *Conn) init() *Conn {
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

// Dialed returns the conn to use for a dialled tc: a Conn that owns it.
func Dialed(tc *net.TCPConn) (net.Conn, error) {
	if !rawConns {
		return tc, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return (&Conn{owner: tc, rc: rc, local: AddrPort(tc.LocalAddr()), remote: AddrPort(tc.RemoteAddr())}).init(), nil
}

// newAcceptedConn takes ownership of fd, a non-blocking socket just
// accepted from remote on local, and sets TCP_NODELAY: IMAP is small
// writes that must not wait for acknowledgements.
func newAcceptedConn(fd int, local, remote netip.AddrPort) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	if !rawConns {
		return fileConn(f)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := (&Conn{owner: f, rc: rc, local: local, remote: remote}).init()
	if err := c.setInt(syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) LocalAddr() net.Addr                { return net.TCPAddrFromAddrPort(c.local) }
func (c *Conn) RemoteAddr() net.Addr               { return net.TCPAddrFromAddrPort(c.remote) }
func (c *Conn) SetDeadline(t time.Time) error      { return c.owner.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.owner.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.owner.SetWriteDeadline(t) }
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	return c.rc, nil
}

func (c *Conn) Close() error {
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

func (c *Conn) Read(p []byte) (int, error) {
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

func (c *Conn) Write(p []byte) (int, error) {
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
func (c *Conn) CloseWrite() error {
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
func (c *Conn) SetKeepAliveConfig(k net.KeepAliveConfig) error {
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

func (c *Conn) setInt(level, name, value int) error {
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
func (c *Conn) opError(op string, err error) error {
	if c.closed.Load() {
		// An *os.File owner reports its own "use of closed file";
		// callers test for net.ErrClosed.
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// fileConn is what an accepted socket is without Conn (built with the tag
// imapgate_tcpconn, to measure Conn on its own): a *net.TCPConn made by
// net.FileConn, which dups the descriptor and closes f.
func fileConn(f *os.File) (net.Conn, error) {
	defer f.Close()
	return net.FileConn(f)
}

// rawConnOf returns the syscall.RawConn of a plain socket: one whose
// readiness on Go's poller says whether a read would block. Nil for
// anything else (TLS may hold decrypted bytes its socket no longer shows;
// a PROXY-protocol conn may hold bytes of its own).
func rawConnOf(c net.Conn) syscall.RawConn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *Conn:
		return c.rc
	case *net.TCPConn:
		sc = c
	case *net.UnixConn: // the exec upstream's socketpair
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// FD returns the descriptor of a plain socket, for the Poller, or -1.
func FD(c net.Conn) int {
	rc := rawConnOf(c)
	if rc == nil {
		return -1
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// Readable returns a function that waits, on Go's poller and within c's
// read deadline, until a read from c would not block (data, EOF or an
// error), without reading and so without a buffer. Nil if c is not a
// plain socket.
func Readable(c net.Conn) func() error {
	rc := rawConnOf(c)
	if rc == nil {
		return nil
	}
	var peek [1]byte
	// Returning false makes RawConn.Read wait on Go's poller.
	readable := func(fd uintptr) bool {
		// Raw, as Conn's reads are: MSG_DONTWAIT never blocks.
		_, _, err := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&peek[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		return err != syscall.EAGAIN && err != syscall.EINTR
	}
	return func() error { return rc.Read(readable) }
}
