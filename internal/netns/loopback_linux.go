//go:build linux

// Package netns holds what code running in a fresh network namespace
// needs, for the namespace tests (internal/netnstest) and imapbench -netns
// alike.
package netns

import "golang.org/x/sys/unix"

// LoopbackUp sets lo up (SIOCSIFFLAGS), as "ip link set lo up" does: a new
// network namespace starts with it down.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
