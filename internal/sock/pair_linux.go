package sock

import (
	"os"
	"syscall"
)

// Pair returns the two ends of a Unix stream socketpair, close-on-exec,
// each owned by its *os.File (whose Close is the only close).
func Pair() (ours, theirs *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "imapgate-session"), os.NewFile(uintptr(fds[1]), "courier-session"), nil
}
