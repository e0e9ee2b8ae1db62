//go:build linux && !imapgate_portable

package sock

import (
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller lets idle relay directions wait without a goroutine each: a
// direction with nothing to copy arms its socket here (EPOLLONESHOT) and its
// goroutine ends; when the socket becomes readable the poller's one
// goroutine starts a new one. Ten thousand idle IDLE sessions then cost ten
// thousand registrations instead of twenty thousand stacks.
type Poller struct {
	epfd   int
	wakefd int      // eventfd: wakes the loop to stop
	file   *os.File // epfd as a pollable file: the loop waits in Go's netpoller

	mu      sync.Mutex
	waiting map[uint64]func() // registration key -> what to run when ready
	next    uint64
	done    chan struct{}
}

// NewPoller starts a Poller and its goroutine.
func NewPoller() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	*(*uint64)(ptrFd(&ev)) = 0 // key 0: the wake-up
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	// An epoll descriptor is readable when it has events: Go's own poller
	// can wait on it, so this loop needs no thread blocked in epoll_wait
	// (and no thread hand-off for every wake-up).
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, file: os.NewFile(uintptr(epfd), "epoll"),
		waiting: make(map[uint64]func()), next: 1, done: make(chan struct{})}
	go p.loop()
	return p, nil
}

// NewKey names a registration; fds are added lazily by the first arm.
func (p *Poller) NewKey() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return p.next
}

// Arm waits (once) for fd to become readable or hung up, then runs ready on
// a new goroutine; added says whether fd is in the epoll set yet. Arming
// checks readiness at once, so data that arrived before arm is not missed.
func (p *Poller) Arm(fd int, key uint64, added bool, ready func()) error {
	p.mu.Lock()
	p.waiting[key] = ready
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	*(*uint64)(ptrFd(&ev)) = key
	op := unix.EPOLL_CTL_MOD
	if !added {
		op = unix.EPOLL_CTL_ADD
	}
	if err := unix.EpollCtl(p.epfd, op, fd, &ev); err != nil {
		p.mu.Lock()
		delete(p.waiting, key)
		p.mu.Unlock()
		return err
	}
	return nil
}

// Disarm cancels a wait; it reports whether one was pending (and so will
// not run).
func (p *Poller) Disarm(key uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.waiting[key]
	delete(p.waiting, key)
	return ok
}

// Unregister removes fd before its owner closes it.
func (p *Poller) Unregister(fd int, key uint64) {
	p.Disarm(key)
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

func (p *Poller) loop() {
	defer close(p.done)
	rc, err := p.file.SyscallConn()
	if err != nil {
		return
	}
	events := make([]unix.EpollEvent, 128)
	stop := false
	drain := func(fd uintptr) bool {
		n, err := unix.EpollWait(int(fd), events, 0)
		if err != nil || n == 0 {
			return false // nothing ready: wait in Go's poller
		}
		for _, ev := range events[:n] {
			key := *(*uint64)(ptrFd(&ev))
			if key == 0 {
				stop = true
				continue
			}
			p.mu.Lock()
			ready := p.waiting[key]
			delete(p.waiting, key)
			p.mu.Unlock()
			if ready != nil {
				go ready()
			}
		}
		return true
	}
	for !stop {
		if err := rc.Read(drain); err != nil {
			return
		}
	}
}

// Close stops the loop; registrations must be gone by then.
func (p *Poller) Close() {
	unix.Write(p.wakefd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-p.done
	p.file.Close() // closes epfd
	unix.Close(p.wakefd)
}

// ptrFd points at EpollEvent's 8 data bytes (Fd and Pad on linux/amd64 and
// arm64), which carry a registration key.
func ptrFd(ev *unix.EpollEvent) unsafe.Pointer { return unsafe.Pointer(&ev.Fd) }
