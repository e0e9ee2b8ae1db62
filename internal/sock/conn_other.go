//go:build !linux || imapgate_portable

package sock

import "net"

// FD returns -1: there is no Poller to register with here.
func FD(net.Conn) int { return -1 }

// Readable returns nil here: a direction waits for data with a buffer in
// a blocked Read.
func Readable(net.Conn) func() error { return nil }
