//go:build linux && !imapgate_portable

package sock

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WaitFirstRecord waits until c's client has sent a complete TLS record
// (RFC 8446 §5.1: a 5-byte header with the length, and that many bytes),
// without reading it: the header is peeked (MSG_PEEK), the bytes queued
// counted (SIOCINQ). It returns the bytes waiting, or 0 if the client
// closed or reset first. The wait ends with an error at c's read deadline
// (a kill sets it in the past). A conn that is not a plain TCP socket (a
// PROXY-wrapped one may hold bytes of its own) is not waited for: it
// returns -1, nil at once, and the handshake's framing decides.
func WaitFirstRecord(c net.Conn) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, nil
	}
	var hdr [5]byte
	var n int
	err = rc.Read(func(fd uintptr) bool {
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
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, nil
}

// FirstRecordFD looks, without reading and without blocking, at what the
// client of socket fd has sent: n > 0 bytes are queued and hold its whole
// first TLS record (RFC 8446 §5.1); n == 0: it closed or reset first;
// n < 0: not yet, and need is how many bytes the first record takes in all
// (5 while the header is incomplete), the low-water mark to wait for
// (SetRcvLowat).
func FirstRecordFD(fd int) (n, need int) {
	var hdr [5]byte
	r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&hdr[0])), uintptr(len(hdr)),
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	switch {
	case e == syscall.EAGAIN || e == syscall.EINTR:
		return -1, len(hdr)
	case e != 0 || r == 0:
		return 0, 0
	case r < uintptr(len(hdr)):
		return -1, len(hdr)
	}
	need = len(hdr) + (int(hdr[3])<<8 | int(hdr[4]))
	var queued int32
	if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(fd), unix.SIOCINQ, uintptr(unsafe.Pointer(&queued))); e != 0 {
		return len(hdr), need // cannot tell: let the handshake find out
	}
	if int(queued) < need {
		return -1, need
	}
	return int(queued), need
}

// SetRcvLowat sets fd's SO_RCVLOWAT: epoll reports it readable only once n
// bytes are queued (or on a close or reset), so a client that sends half a
// record and stalls wakes no one (tcp(7); the kernel caps n at half the
// receive buffer). 1 is the default.
func SetRcvLowat(fd, n int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, n)
}
