package integration

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"imapgate/config"
	"imapgate/embedded"
)

// An office of 300 users behind one NAT address, default limits. 9 a.m.
// is cold (imapgate knows nothing of the address): the users log in and
// out 30 at a time. Then all 300 log in at the same moment and hold their
// sessions, log out, and reconnect at once twice more; meanwhile four
// phones with last year's password retry from the same address. No login
// is refused and the address is never banned.
func TestOfficeBehindOneAddressNeverRefused(t *testing.T) {
	const users, phones, retries = 300, 4, 4
	const nat = "127.0.50.1"
	accts := accounts(users)
	for p := 1; p <= phones; p++ {
		accts = append(accts, embedded.Account{User: fmt.Sprint("phone", p), Password: "this year"})
	}
	cfg := config.Default()
	if raceDetector {
		// Not a limit: the time a connection may wait for its pre-login
		// slot and handshake, which 300 handshakes at once on two cores
		// under the race detector can exceed.
		cfg.Timeouts.Handshake = config.Duration(time.Minute)
	}
	g := startGate(t, gateOptions{cfg: cfg, accounts: accts})
	user := func(i int) string { return fmt.Sprintf("user%02d", i+1) }

	// open logs user in from the office; the session ends with its
	// connection after at most 30 s.
	dialer := &net.Dialer{Timeout: 2 * time.Minute, LocalAddr: &net.TCPAddr{IP: net.ParseIP(nat)}}
	open := func(user, pass string) (*imapclient.Client, error) {
		conn, err := tls.DialWithDialer(dialer, "tcp", g.addr, clientTLS)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", user, err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		c := imapclient.New(conn, nil)
		if err := c.WaitGreeting(); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: greeting: %w", user, err)
		}
		if err := c.Login(user, pass).Wait(); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: login: %w", user, err)
		}
		return c, nil
	}
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	// wave runs f for users [from, to) at once and waits for them.
	wave := func(from, to int, f func(i int)) {
		var wg sync.WaitGroup
		for i := from; i < to; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(i)
			}()
		}
		wg.Wait()
	}
	inAndOut := func(i int) {
		c, err := open(user(i), "pw")
		if err != nil {
			fail(err)
			return
		}
		if err := c.Logout().Wait(); err != nil {
			fail(fmt.Errorf("%s: logout: %w", user(i), err))
		}
		c.Close()
	}

	// 9 a.m., cold: 30 at a time.
	for from := 0; from < users; from += 30 {
		wave(from, from+30, inAndOut)
	}

	// The phones start now and retry in the background. (While the proxy
	// passes no attempt keys, each retry counts as a failure; started
	// before the office logged in, four phones' retries would be ten
	// failures over three users from an address nobody else uses yet.)
	var phonesDone sync.WaitGroup
	for p := 1; p <= phones; p++ {
		phonesDone.Add(1)
		go func() {
			defer phonesDone.Done()
			for r := 0; r < retries; r++ {
				c, err := open(fmt.Sprint("phone", p), "last year")
				if err == nil {
					c.Close()
					fail(fmt.Errorf("phone%d logged in with last year's password", p))
					return
				}
				if !strings.Contains(err.Error(), "login:") {
					fail(fmt.Errorf("phone%d retry %d refused before login: %w", p, r, err))
				}
			}
		}()
	}

	// Everyone at once, holding the sessions until all are in.
	var in sync.WaitGroup
	in.Add(users)
	release := make(chan struct{})
	var held sync.WaitGroup
	held.Add(users)
	go wave(0, users, func(i int) {
		defer held.Done()
		c, err := open(user(i), "pw")
		in.Done()
		if err != nil {
			fail(err)
			return
		}
		<-release
		c.Logout().Wait()
		c.Close()
	})
	in.Wait()
	if total, _ := g.limiter.PerIP(netip.MustParseAddr(nat)); total < users-len(errs) {
		t.Errorf("%d sessions held from the office, want %d", total, users)
	}
	close(release)
	held.Wait()

	// Immediate reconnects: everyone logs out and in again at once, twice.
	wave(0, users, func(i int) {
		inAndOut(i)
		inAndOut(i)
	})
	phonesDone.Wait()

	// A last round after the phones: still nobody refused.
	wave(0, 50, inAndOut)

	for i, err := range errs {
		if i == 10 {
			t.Errorf("... %d errors in all", len(errs))
			break
		}
		t.Error(err)
	}
	for _, l := range g.log.Lines() {
		if strings.Contains(l, "127.0.50.1") && (strings.Contains(l, "limit reached") || strings.Contains(l, "Connection refused")) {
			t.Errorf("the office was refused: %q", l)
		}
	}
	for _, b := range g.limiter.Bans(time.Now()) {
		if b.User == "" {
			t.Errorf("address ban %+v", b)
		}
	}
}
