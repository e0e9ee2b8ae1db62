package main

import (
	"fmt"
	"os"
	"os/exec"

	"imapgate/internal/netns"
)

// enterNetns runs imapbench again under "unshare -n" and exits with its
// status; inside (IMAPBENCH_NETNS set) it brings lo up and returns. The
// peers and the load all live in that namespace: imapgate-kernel's
// nftables table is that namespace's, never the host's.
func enterNetns() {
	if os.Getenv("IMAPBENCH_NETNS") != "" {
		check(netns.LoopbackUp())
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
