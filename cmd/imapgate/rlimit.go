package main

import (
	"fmt"
	"syscall"

	"imapgate/config"
)

type openFiles struct {
	soft, hard, need uint64
}

// filesNeeded is what table.max sessions need: a descriptor for the client
// and one for the upstream each, plus listeners, log files, the embedded
// server and a margin.
func filesNeeded(max int) uint64 { return uint64(2*max) + 64 }

// checkOpenFiles raises the soft open-file limit to the hard one and checks
// that it holds table.max sessions. If not, it refuses to start, unless
// limits.open_files_check is false (then it only warns) or in demo mode
// (then it shrinks the table to fit).
func checkOpenFiles(cfg *config.Config, demo bool) (openFiles, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return openFiles{}, fmt.Errorf("read open-file limit: %w", err)
	}
	if r.Cur < r.Max {
		raised := r
		raised.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			r = raised
		}
	}
	of := openFiles{soft: r.Cur, hard: r.Max, need: filesNeeded(cfg.Table.Max)}
	if of.soft >= of.need {
		return of, nil
	}
	fits := int((of.soft - 64) / 2)
	if demo {
		cfg.Table.Max = max(fits, 16)
		of.need = filesNeeded(cfg.Table.Max)
		return of, nil
	}
	err := fmt.Errorf("open-file limit is %d (hard %d): it holds about %d sessions, but table.max = %d needs %d descriptors; "+
		"raise the limit (ulimit -n, or LimitNOFILE= in the systemd unit), lower table.max, or set limits.open_files_check = false",
		of.soft, of.hard, fits, cfg.Table.Max, of.need)
	if cfg.Limits.OpenFilesCheck {
		return of, err
	}
	return of, nil
}
