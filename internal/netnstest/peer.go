//go:build linux

package netnstest

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Peer is a second network namespace joined to the test's by a veth pair,
// for clients whose packets must arrive as a remote client's do: through
// prerouting first. (A connection over lo is tracked by conntrack on its
// way out, before prerouting sees it, so a raw-prerouting drop cannot be
// told from no drop there.) The test's side is LocalAddr, the peer's the
// addresses of Sources; both are in 198.18.0.0/24 (RFC 2544's benchmark
// range), which exists only in these two namespaces.
//
// One goroutine, locked to a thread that alone is in the peer namespace,
// makes every peer socket; it ends (and the thread with it) at cleanup.
type Peer struct {
	LocalAddr netip.Addr
	Sources   []netip.Addr
	do        chan func()
}

// NewPeer makes the peer namespace with n source addresses; only inside a
// namespace made by Enter (never in the host's).
func NewPeer(t *testing.T, n int) *Peer {
	t.Helper()
	if !Inside(t) {
		t.Fatal("netnstest.NewPeer outside the test's own namespace")
	}
	p := &Peer{LocalAddr: netip.MustParseAddr("198.18.0.1"), do: make(chan func())}
	for i := 0; i < n; i++ {
		p.Sources = append(p.Sources, netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}))
	}
	nsFD := make(chan int)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		nsFD <- fd
		for f := range p.do {
			f()
		}
	}()
	var fd int
	select {
	case err := <-errc:
		t.Fatalf("peer namespace: %v", err)
	case fd = <-nsFD:
	}
	t.Cleanup(func() { close(p.do) })
	defer unix.Close(fd)
	if err := p.setup(fd); err != nil {
		t.Fatalf("veth to the peer namespace: %v", err)
	}
	return p
}

// run runs f on the peer's thread.
func (p *Peer) run(f func()) {
	done := make(chan struct{})
	p.do <- func() { f(); close(done) }
	<-done
}

// Dial connects from src (one of Sources) to addr within timeout; the
// socket lives in the peer namespace.
func (p *Peer) Dial(src netip.Addr, addr string, timeout time.Duration) (c net.Conn, err error) {
	p.run(func() {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: timeout}
		c, err = d.Dial("tcp", addr)
	})
	return c, err
}

func (p *Peer) setup(nsFD int) error {
	local, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return err
	}
	defer local.Close()
	peerAttrs := netlink.NewAttributeEncoder()
	peerAttrs.String(unix.IFLA_IFNAME, "ig1")
	peerAttrs.Uint32(unix.IFLA_NET_NS_FD, uint32(nsFD))
	pb, err := peerAttrs.Encode()
	if err != nil {
		return err
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, "ig0")
	ae.Nested(unix.IFLA_LINKINFO, func(li *netlink.AttributeEncoder) error {
		li.String(unix.IFLA_INFO_KIND, "veth")
		li.Nested(unix.IFLA_INFO_DATA, func(d *netlink.AttributeEncoder) error {
			d.Bytes(1 /* VETH_INFO_PEER */, append(ifinfomsg(0, 0), pb...))
			return nil
		})
		return nil
	})
	if err := request(local, unix.RTM_NEWLINK, netlink.Create|netlink.Excl, ifinfomsg(0, 0), ae); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	if err := configure(local, "ig0", []netip.Addr{p.LocalAddr}); err != nil {
		return err
	}
	p.run(func() {
		var c *netlink.Conn
		if c, err = netlink.Dial(unix.NETLINK_ROUTE, nil); err != nil {
			return
		}
		defer c.Close()
		if err = configure(c, "ig1", p.Sources); err == nil {
			err = linkUp(c, "lo")
		}
	})
	return err
}

// configure gives the link its addresses (/24) and sets it up.
func configure(c *netlink.Conn, name string, addrs []netip.Addr) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		ae := netlink.NewAttributeEncoder()
		ae.Bytes(unix.IFA_LOCAL, a.AsSlice())
		ae.Bytes(unix.IFA_ADDRESS, a.AsSlice())
		msg := []byte{unix.AF_INET, 24, 0, 0}
		msg = binary.NativeEndian.AppendUint32(msg, uint32(ifi.Index))
		if err := request(c, unix.RTM_NEWADDR, netlink.Create|netlink.Replace, msg, ae); err != nil {
			return fmt.Errorf("address %s on %s: %w", a, name, err)
		}
	}
	return linkUp(c, name)
}

func linkUp(c *netlink.Conn, name string) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return err
	}
	if err := request(c, unix.RTM_NEWLINK, 0, ifinfomsg(ifi.Index, unix.IFF_UP), nil); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// ifinfomsg is struct ifinfomsg: family, type, index, flags, change.
func ifinfomsg(index int, up uint32) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], up)
	binary.NativeEndian.PutUint32(b[12:], up)
	return b
}

func request(c *netlink.Conn, typ netlink.HeaderType, flags netlink.HeaderFlags, fixed []byte, ae *netlink.AttributeEncoder) error {
	data := fixed
	if ae != nil {
		b, err := ae.Encode()
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	_, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Acknowledge | flags},
		Data:   data,
	})
	return err
}

// Flood starts n connections from src to addr without waiting for any
// (non-blocking connects: n SYNs at once), and closes them after wait. It
// returns how many were accepted by then (connected).
func (p *Peer) Flood(src netip.Addr, addr netip.AddrPort, n int, wait time.Duration) (connected int, err error) {
	var fds []int
	p.run(func() {
		for i := 0; i < n; i++ {
			var fd int
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
				return
			}
			fds = append(fds, fd)
			if err = unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
				return
			}
			if cerr := unix.Connect(fd, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}); cerr != nil && cerr != unix.EINPROGRESS {
				err = cerr
				return
			}
		}
	})
	time.Sleep(wait)
	for _, fd := range fds {
		if _, perr := unix.Getpeername(fd); perr == nil {
			connected++
		}
		unix.Close(fd)
	}
	return connected, err
}
