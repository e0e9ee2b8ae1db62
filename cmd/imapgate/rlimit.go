package main

import (
	"fmt"
	"math"

	"imapgate/config"
	"imapgate/internal/rlimit"
)

type openFiles struct {
	soft, hard, need uint64
	// short says why the limit cannot hold table.max sessions when
	// limits.open_files_check = false let imapgate start anyway; the
	// caller warns with it.
	short string
}

// fileMargin is what imapgate holds besides sessions: listeners, log
// files, the admin socket, the embedded server.
const fileMargin = 64

// filesNeeded is what max sessions need: a descriptor for the client and
// one for the upstream each, plus the margin. It saturates instead of
// wrapping.
func filesNeeded(max int) uint64 {
	if max <= 0 {
		return fileMargin
	}
	if uint64(max) > (math.MaxUint64-fileMargin)/2 {
		return math.MaxUint64
	}
	return 2*uint64(max) + fileMargin
}

// sessionsFitting is how many sessions a limit of n descriptors holds; 0
// when it does not even cover the margin (no wrap-around for tiny limits,
// none for RLIM_INFINITY either).
func sessionsFitting(n uint64) uint64 {
	if n <= fileMargin {
		return 0
	}
	return (n - fileMargin) / 2
}

// checkOpenFiles raises the soft open-file limit to the hard one and checks
// that it holds table.max sessions. If not, it refuses to start, unless
// limits.open_files_check is false (then it starts, and of.short says
// what to warn about) or in demo mode (then it shrinks the table to fit).
func checkOpenFiles(cfg *config.Config, demo bool) (openFiles, error) {
	soft, hard, err := rlimit.RaiseOpenFiles()
	if err != nil {
		return openFiles{}, fmt.Errorf("read open-file limit: %w", err)
	}
	return assessOpenFiles(soft, hard, cfg, demo)
}

// assessOpenFiles is checkOpenFiles' decision for a soft and hard limit.
func assessOpenFiles(soft, hard uint64, cfg *config.Config, demo bool) (openFiles, error) {
	of := openFiles{soft: soft, hard: hard, need: filesNeeded(cfg.Table.Max)}
	if of.soft >= of.need {
		return of, nil
	}
	fits := sessionsFitting(of.soft)
	if demo {
		cfg.Table.Max = int(max(fits, 16))
		of.need = filesNeeded(cfg.Table.Max)
		return of, nil
	}
	short := fmt.Sprintf("open-file limit is %d (hard %d): it holds about %d sessions, but table.max = %d needs %d descriptors",
		of.soft, of.hard, fits, cfg.Table.Max, of.need)
	if cfg.Limits.OpenFilesCheck {
		return of, fmt.Errorf("%s; raise the limit (ulimit -n, or LimitNOFILE= in the systemd unit), lower table.max, "+
			"or set limits.open_files_check = false", short)
	}
	of.short = short + "; starting anyway because limits.open_files_check = false"
	return of, nil
}
