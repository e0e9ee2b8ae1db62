//go:build !linux

package main

import (
	"fmt"
	"os"
)

// enterNetns: network namespaces are Linux's; -netns cannot be honoured.
func enterNetns() {
	fmt.Fprintln(os.Stderr, "imapbench: -netns needs Linux (unshare -n)")
	os.Exit(2)
}
