package main

import (
	"net/netip"
	"syscall"
	"time"
)

// synFlood opens n connections from src to addr without waiting for any
// (non-blocking connects, 250 at a time), closing each batch 50 ms later.
func synFlood(src, addr string, n int) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	from := netip.MustParseAddr(src).As4()
	for n > 0 {
		batch := min(n, 250)
		var fds []int
		for j := 0; j < batch; j++ {
			fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: from}); err != nil {
				return err
			}
			if err := syscall.Connect(fd, &syscall.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil && err != syscall.EINPROGRESS {
				return err
			}
		}
		time.Sleep(50 * time.Millisecond)
		for _, fd := range fds {
			syscall.Close(fd)
		}
		n -= batch
	}
	return nil
}
