//go:build unix

// Package rlimit reads and raises the process's open-file limit: the one
// resource limit imapgate sizes itself by (two descriptors per session).
package rlimit

import "syscall"

// OpenFiles returns the soft and hard RLIMIT_NOFILE. (The fields are
// uint64 on Linux and int64 on FreeBSD; RLIM_INFINITY is the largest
// value either way.)
func OpenFiles() (soft, hard uint64, err error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, err
	}
	return uint64(r.Cur), uint64(r.Max), nil
}

// RaiseOpenFiles raises the soft open-file limit to the hard one, if it
// can, and returns the limits then in force.
func RaiseOpenFiles() (soft, hard uint64, err error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, err
	}
	if r.Cur < r.Max {
		raised := r
		raised.Cur = r.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			r = raised
		}
	}
	return uint64(r.Cur), uint64(r.Max), nil
}
