package integration

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"imapgate/config"
)

// floodOptions size a flood against the connection table.
type floodOptions struct {
	addrs, perAddr int  // flood sources and connections held by each
	halfHello      bool // send half a ClientHello, then stall; else nothing
	honest         int  // honest sessions: TLS, LOGIN, SELECT, LOGOUT
	workers        int  // honest sessions run this many at a time
}

// A table full of silent connections, or of connections that sent half a
// ClientHello and stalled, from many addresses: every honest client still
// logs in, and none of them is early-dropped (each would see it: a reset
// handshake or "* BYE [UNAVAILABLE] Server busy"). The speed of it is
// imapbench's (flood-honest), not this test's: here only correctness.
func TestFloodSilentHonestClientsNeverFail(t *testing.T) {
	floodTable(t, floodOptions{addrs: 60, perAddr: 10, honest: 100, workers: 4})
}

func TestFloodHalfHelloHonestClientsNeverFail(t *testing.T) {
	floodTable(t, floodOptions{addrs: 60, perAddr: 10, halfHello: true, honest: 100, workers: 4})
}

func floodTable(t *testing.T, o floodOptions) {
	cfg := config.Default()
	cfg.Table.Max = 256 // the flood holds 600: the table stays full
	g := startGate(t, gateOptions{cfg: cfg})

	stop := make(chan struct{})
	var held sync.Map // net.Conn -> struct{}
	var flood sync.WaitGroup
	for a := 0; a < o.addrs; a++ {
		src := fmt.Sprintf("127.1.%d.1", a) // one per /24: no per-network limit bites
		for c := 0; c < o.perAddr; c++ {
			flood.Add(1)
			go func() {
				defer flood.Done()
				floodSlot(g.addr, src, o.halfHello, stop, &held)
			}()
		}
	}
	waitFor(t, "the table to fill", func() bool { return g.srv.Table().Count() >= cfg.Table.Max })

	var mu sync.Mutex
	var lat []time.Duration
	var failures []string
	jobs := make(chan int, o.honest)
	for i := 0; i < o.honest; i++ {
		jobs <- i
	}
	close(jobs)
	var honest sync.WaitGroup
	for w := 0; w < o.workers; w++ {
		honest.Add(1)
		go func() {
			defer honest.Done()
			for i := range jobs {
				src := fmt.Sprintf("127.0.8.%d", i%250+1)
				start := time.Now()
				err := honestSession(src, g.addr)
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Sprintf("session %d from %s: %v", i, src, err))
				} else {
					lat = append(lat, time.Since(start))
				}
				mu.Unlock()
			}
		}()
	}
	honest.Wait()
	close(stop)
	held.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
	flood.Wait()

	st := g.srv.Table().Stats()
	slices.Sort(lat)
	if len(lat) > 0 {
		t.Logf("%d honest sessions, p50 %v, p99 %v; table: %d early drops (%d silent), %d silent timeouts, %d insert failures",
			len(lat), lat[len(lat)/2], lat[len(lat)*99/100], st.EarlyDrop, st.EarlyDropSilent, st.SilentTimeout, st.InsertFailed)
	}
	for _, f := range failures {
		t.Error(f)
	}
	if st.EarlyDrop == 0 {
		t.Fatal("no early drop: the flood never filled the table")
	}
	// The drops are in the log, with their sources, and no honest client
	// among them.
	g.srv.Table().Expire(time.Now().Add(6 * time.Second))
	waitLog(t, g, "conntable: early drop: ")
	for _, l := range g.log.Lines() {
		if strings.Contains(l, "early drop") && strings.Contains(l, "127.0.8.") {
			t.Errorf("an honest client was early-dropped: %q", l)
		}
	}
}

// floodSlot holds one flood connection from src, and opens another each
// time the proxy closes it, until stop; bounded to 200 connections.
func floodSlot(addr, src string, halfHello bool, stop <-chan struct{}, held *sync.Map) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	for i := 0; i < 200; i++ {
		select {
		case <-stop:
			return
		default:
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		held.Store(c, struct{}{})
		if halfHello {
			// A handshake record announcing 512 bytes, with 100 of them.
			c.Write(append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, make([]byte, 89)...))
		}
		start := time.Now()
		io.Copy(io.Discard, c) // until the proxy (or stop) closes it
		c.Close()
		held.Delete(c)
		if time.Since(start) < 100*time.Millisecond {
			time.Sleep(100 * time.Millisecond) // refused at once (a rate limit): do not spin
		}
	}
}

// honestSession is a mail client's visit: TLS, LOGIN, SELECT, LOGOUT.
func honestSession(src, addr string) error {
	c, err := login(src, addr, "demo", "demo")
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		return fmt.Errorf("select: %w", err)
	}
	if err := c.Logout().Wait(); err != nil {
		return fmt.Errorf("logout: %w", err)
	}
	return nil
}
