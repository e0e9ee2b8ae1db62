//go:build !linux || imapgate_portable

package sock

import "net"

// WaitFirstRecord does not wait here: it returns -1, nil, and the
// handshake's record framing (the proxy's progress marks) decides whether
// the client is silent.
func WaitFirstRecord(net.Conn) (int, error) { return -1, nil }

// FirstRecordFD and SetRcvLowat are Linux-only, never reached here (Raw is
// false).
func FirstRecordFD(int) (n, need int) { return 0, 0 }
func SetRcvLowat(int, int) error      { return nil }
