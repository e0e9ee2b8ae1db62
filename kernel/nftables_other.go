//go:build !linux

package kernel

func openBackend(string, []uint16) (backend, error) { return nil, ErrUnsupported }
