package sock

import (
	"net"
	"syscall"
	"testing"
)

// TestListenIsPlainTCP checks that Listen makes a TCP
// socket, not MPTCP (Go's default since 1.24, where the kernel has it).
func TestListenIsPlainTCP(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		proto, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PROTOCOL)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if proto != syscall.IPPROTO_TCP {
		t.Errorf("listener protocol %d, want TCP (%d); 262 is MPTCP", proto, syscall.IPPROTO_TCP)
	}
}
