//go:build !linux

package main

import "errors"

// synFlood needs Linux's non-blocking socket flags (the kernel scenario is
// Linux's anyway: nftables).
func synFlood(src, addr string, n int) error {
	return errors.New("imapbench: the SYN flood needs Linux")
}
