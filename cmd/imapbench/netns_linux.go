package main

import (
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// enterNetns runs imapbench again under "unshare -n" and exits with its
// status; inside (IMAPBENCH_NETNS set) it brings lo up and returns. The
// peers and the load all live in that namespace: imapgate-kernel's
// nftables table is that namespace's, never the host's.
func enterNetns() {
	if os.Getenv("IMAPBENCH_NETNS") != "" {
		check(loopbackUp())
		return
	}
	cmd := exec.Command("unshare", append([]string{"-n", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), "IMAPBENCH_NETNS=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		check(fmt.Errorf("unshare -n (needs root): %w", err))
	}
	os.Exit(0)
}

// loopbackUp sets lo up (SIOCSIFFLAGS), as "ip link set lo up" does.
func loopbackUp() error {
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
