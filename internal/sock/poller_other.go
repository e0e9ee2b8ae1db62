//go:build !linux || imapgate_portable

package sock

import "errors"

// Poller is Linux-only; elsewhere idle directions keep a blocked goroutine.
type Poller struct{}

// NewPoller fails here: the caller runs without one.
func NewPoller() (*Poller, error) { return nil, errors.New("no epoll") }

func (p *Poller) NewKey() uint64                      { return 0 }
func (p *Poller) Arm(int, uint64, bool, func()) error { return errors.New("no epoll") }
func (p *Poller) Disarm(uint64) bool                  { return false }
func (p *Poller) Unregister(int, uint64)              {}
func (p *Poller) Close()                              {}
