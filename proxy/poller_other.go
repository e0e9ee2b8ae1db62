//go:build !linux

package proxy

import "errors"

// poller is Linux-only; elsewhere idle directions keep a blocked goroutine.
type poller struct{}

func newPoller() (*poller, error)                     { return nil, errors.New("no epoll") }
func (p *poller) newKey() uint64                      { return 0 }
func (p *poller) arm(int, uint64, bool, func()) error { return errors.New("no epoll") }
func (p *poller) disarm(uint64) bool                  { return false }
func (p *poller) unregister(int, uint64)              {}
func (p *poller) close()                              {}
