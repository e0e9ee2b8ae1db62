//go:build unix && !linux

package sock

import (
	"os"
	"syscall"
)

// Pair returns the two ends of a Unix stream socketpair, close-on-exec,
// each owned by its *os.File (whose Close is the only close). Without
// SOCK_CLOEXEC, ForkLock keeps a concurrent fork from inheriting them.
func Pair() (ours, theirs *os.File, err error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "imapgate-session"), os.NewFile(uintptr(fds[1]), "courier-session"), nil
}
