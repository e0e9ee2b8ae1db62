//go:build linux && !imapgate_portable

package sock

import (
	"net"
	"os"
	"syscall"
	"unsafe"
)

// ConnFD makes fd, a socket AcceptFD returned, a *net.TCPConn; see
// newAcceptedConn. fd is closed either way.
func ConnFD(fd int) (net.Conn, error) { return newAcceptedConn(fd) }

// newAcceptedConn takes ownership of fd, a non-blocking socket accepted
// raw, and makes it a *net.TCPConn (net.FileConn: a dup, then the usual
// setup, TCP_NODELAY included; fd itself is closed). A Conn doing its own
// raw reads and writes through the socket's RawConn, once here, was
// measured against this with cmd/imapbench -baseline and did not pay
// (README, "System calls on the hot path").
func newAcceptedConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
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
		// Raw (RawSyscall, no scheduler bookkeeping): MSG_DONTWAIT never blocks.
		_, _, err := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&peek[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		return err != syscall.EAGAIN && err != syscall.EINTR
	}
	return func() error { return rc.Read(readable) }
}
