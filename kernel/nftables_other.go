//go:build !linux

package kernel

func openBackend(string, []uint16) (backend, error) { return nil, ErrUnsupported }

// Probe reports that nftables cannot be used here (not Linux).
func Probe() error { return ErrUnsupported }

// TableHeld reports nil: no table is held where nftables is not.
func TableHeld(string) error { return nil }
