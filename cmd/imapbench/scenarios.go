package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"imapgate/internal/sock"
)

var clientTLS = &tls.Config{
	InsecureSkipVerify: true,
	MinVersion:         tls.VersionTLS13, // TLS 1.3 full handshakes: no session cache
	MaxVersion:         tls.VersionTLS13,
}

// source returns the i-th client address: 127.20.0.1 … spread over 127/8
// so that per-address limits bite only in the flood scenario.
func source(i int) string {
	i %= 4000
	return fmt.Sprintf("127.%d.%d.%d", 20+i/(250*250), (i/250)%250, i%250+1)
}

type imapConn struct {
	c *tls.Conn
	r *bufio.Reader
}

func dialIMAP(addr, src string) (*imapConn, error) { return dialIMAPDeadline(addr, src, time.Time{}) }

// dialIMAPDeadline is dialIMAP with a deadline for the whole connection
// (zero: none).
func dialIMAPDeadline(addr, src string, deadline time.Time) (*imapConn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := tls.DialWithDialer(d, "tcp", addr, clientTLS)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(deadline)
	ic := &imapConn{c: c, r: bufio.NewReaderSize(c, 4096)}
	if _, err := ic.r.ReadString('\n'); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return ic, nil
}

// cmd sends a command and reads up to its tagged reply, skipping literals.
func (ic *imapConn) cmd(tag, command string) error {
	if _, err := io.WriteString(ic.c, tag+" "+command+"\r\n"); err != nil {
		return err
	}
	for {
		line, err := ic.r.ReadString('\n')
		if err != nil {
			return err
		}
		if i := strings.LastIndexByte(line, '{'); i >= 0 && strings.HasSuffix(line, "}\r\n") {
			n, _ := strconv.ParseInt(line[i+1:len(line)-3], 10, 64)
			if _, err := io.CopyN(io.Discard, ic.r, n); err != nil {
				return err
			}
			continue
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line[len(tag)+1:], "OK") {
				return fmt.Errorf("%s: %s", command, strings.TrimSpace(line))
			}
			return nil
		}
		if strings.HasPrefix(line, "+") {
			return nil
		}
	}
}

func login(addr, src string) (*imapConn, error) {
	ic, err := dialIMAP(addr, src)
	if err != nil {
		return nil, err
	}
	if err := ic.cmd("a", "LOGIN bench bench"); err != nil {
		ic.c.Close()
		return nil, err
	}
	return ic, nil
}

// idleHook, if set, runs while the idle sessions are open (profiling).
var idleHook func(*peer)

// result is one scenario's figure for one peer in one round.
type result struct {
	value float64
	note  string
}

// parallel runs job(0..n-1) on `workers` goroutines and returns the first
// error.
func parallel(n, workers int, job func(i int) error) error {
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := job(i); err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// fullSessions: TCP connect, TLS 1.3 handshake, greeting, LOGIN, LOGOUT.
// Figure: server CPU per session, in milliseconds.
func fullSessions(p *peer, n, workers int) (result, error) {
	before := p.cpu()
	err := parallel(n, workers, func(i int) error {
		ic, err := login(p.addr, source(i))
		if err != nil {
			return err
		}
		defer ic.c.Close()
		if err := ic.cmd("b", "LOGOUT"); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	})
	if err != nil {
		return result{}, err
	}
	time.Sleep(200 * time.Millisecond) // let the last closes be accounted
	cpu := p.cpu() - before
	return result{value: float64(cpu) / float64(time.Millisecond) / float64(n)}, nil
}

// idleSessions: n sessions logged in and in IDLE. Figure: server RSS per
// session in KiB (RSS with them open minus RSS before).
func idleSessions(p *peer, n, workers int) (result, error) {
	before := p.rss()
	conns := make([]*imapConn, n) // each job writes only its own slot
	defer func() {
		for _, ic := range conns {
			if ic != nil {
				ic.c.Close()
			}
		}
	}()
	err := parallel(n, workers, func(i int) error {
		ic, err := login(p.addr, source(i))
		if err != nil {
			return err
		}
		conns[i] = ic
		return ic.cmd("c", "IDLE")
	})
	if err != nil {
		return result{}, err
	}
	time.Sleep(500 * time.Millisecond)
	after := p.rss()
	if hook := idleHook; hook != nil {
		hook(p)
	}
	return result{value: float64(after-before) / 1024 / float64(n)}, nil
}

// bulk: 4 sessions each FETCH a 1 MiB message `fetches` times. Figure:
// server CPU seconds per GB relayed.
func bulk(p *peer, sessions, fetches int) (result, error) {
	var conns []*imapConn
	for i := 0; i < sessions; i++ {
		ic, err := login(p.addr, source(i))
		if err != nil {
			return result{}, err
		}
		defer ic.c.Close()
		conns = append(conns, ic)
	}
	before := p.cpu()
	var wg sync.WaitGroup
	errc := make(chan error, sessions)
	for _, ic := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := 0; f < fetches; f++ {
				if err := ic.cmd("f", "FETCH 1 BODY[]"); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return result{}, err
	}
	cpu := p.cpu() - before
	gb := float64(sessions*fetches) * (1 << 20) / 1e9
	return result{value: cpu.Seconds() / gb}, nil
}

// floodFigures are the flood scenario's figures for one peer.
type floodFigures struct {
	cpu, latency result // per refused attempt before any escalation (µs), median time to refusal (µs)
	// With the kernel path (peer imapgate-kernel): when the first attempt
	// was dropped in the kernel (s after the flood began), and the server
	// CPU per attempt from then on (µs); zero for the others.
	escalation, escalatedCPU result
	// honest is the honest sessions' median during the flood over their
	// median without it.
	honest result
	kernel bool
}

// flood is the flood scenario for one peer alone, now imapgate-kernel's
// (the others: floodInterleaved, then floodHonest). One address holds its
// perIPLimit sessions, then tries `attempts` more TLS connections one
// after another. Figures: server CPU per refused attempt (µs) and the
// median time to refusal (µs), from a pass with nothing else running; then the honest sessions' slowdown, from a second
// pass by another address (its own held sessions), which floods while
// `honest` honest sessions from other addresses log in. The passes are
// apart because an honest session costs the server far more than a
// refusal (0.8-1.1 ms against 50-90 µs here): timed in the same pass,
// 200 of them had added 20-28 µs to every peer's CPU per refused attempt.
// For a peer that escalates to the kernel (an attempt's connect then
// times out), the refusals up to the first drop are the "before" figures;
// the remaining attempts are then made as SYNs without waiting (the
// client's cost of a dropped connect is its timeout, not the server's),
// and their server CPU is the "escalated" figure.
func flood(p *peer, attempts, honest int) (f floodFigures, err error) {
	hello, err := recordClientHello()
	if err != nil {
		return f, err
	}
	const src = "127.250.250.250"
	release, err := holdSessions(p, src)
	if err != nil {
		return f, err
	}
	r, err := floodPass(p, src, attempts, hello)
	release()
	if err != nil {
		return f, err
	}
	f.cpu = result{value: float64(r.cpu) / float64(time.Microsecond) / float64(max(r.refused, 1))}
	f.latency = result{value: float64(median(r.lat)) / float64(time.Microsecond)}
	if r.kernel {
		f.kernel = true
		f.escalation = result{value: r.escalation.Seconds()}
		f.escalatedCPU = result{value: float64(r.escalatedCPU) / float64(time.Microsecond) / float64(max(r.syns, 1))}
	}
	f.honest, err = floodHonest(p, attempts, honest, hello)
	return f, err
}

// floodInterleaved is flood's first pass for several peers at once, all
// running: each holds its sessions, then the attempts are made in
// `slices` rounds of attempts/slices per peer, the peers in turn. A
// peer's CPU per refused attempt then comes from the same stretches of
// time as the others', so what the machine does meanwhile (this VM's
// neighbours, the load generator's core) weighs on all alike: one
// pass per peer, one after another, gave per-round ratios to HAProxy
// spread from 0.57 to 1.04 (the floor's own spread 0.49 to 0.79).
// Peers that escalate to the kernel take flood's own pass instead.
func floodInterleaved(ps []*peer, attempts, slices int, hello []byte) (map[string]floodFigures, error) {
	const src = "127.250.250.250"
	for _, p := range ps {
		if isFloor(p.name) {
			continue
		}
		release, err := holdSessions(p, src)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	type sum struct {
		cpu     time.Duration
		refused int
		lat     []time.Duration
	}
	sums := make([]sum, len(ps))
	err := inTurn(slices, attempts, len(ps), func(k, from, n int) error {
		r, err := floodPass(ps[k], src, n, hello)
		if err != nil {
			return fmt.Errorf("%s: %w", ps[k].name, err)
		}
		sums[k].cpu += r.cpu
		sums[k].refused += r.refused
		sums[k].lat = append(sums[k].lat, r.lat...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]floodFigures, len(ps))
	for k, p := range ps {
		out[p.name] = floodFigures{
			cpu:     result{value: float64(sums[k].cpu) / float64(time.Microsecond) / float64(max(sums[k].refused, 1))},
			latency: result{value: float64(median(sums[k].lat)) / float64(time.Microsecond)},
		}
	}
	return out, nil
}

// inTurn splits total attempts (or sessions) into slices and hands each
// slice to every one of n peers or groups in turn, each slice beginning
// with the next one: do(k, from, count) runs items from..from+count-1
// for the k-th. It stops at do's first error.
func inTurn(slices, total, n int, do func(k, from, count int) error) error {
	slices = max(1, min(slices, total))
	for i := 0; i < slices; i++ {
		from, to := total*i/slices, total*(i+1)/slices
		for j := 0; j < n; j++ {
			if err := do((i+j)%n, from, to-from); err != nil {
				return err
			}
		}
	}
	return nil
}

// floodHonest is flood's second pass: the honest sessions' median while
// another address floods, over their median without the flood.
func floodHonest(p *peer, attempts, honest int, hello []byte) (result, error) {
	quiet, _ := honestRunProc(p, honest)
	// The honest sessions' slowdown: the same flood, from another address,
	// again and again until they are done (at most 20 passes).
	const src2 = "127.250.250.249"
	release, err := holdSessions(p, src2)
	if err != nil {
		return result{}, err
	}
	defer release()
	honestDone := make(chan []time.Duration, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		lat, _ := honestRunProc(p, honest)
		honestDone <- lat
	}()
	var during []time.Duration
	for pass := 0; during == nil; pass++ {
		if pass < 20 {
			if _, err := floodPass(p, src2, attempts, hello); err != nil {
				return result{}, err
			}
		}
		select {
		case during = <-honestDone:
		default:
			if pass >= 20 {
				during = <-honestDone
			}
		}
	}
	if m := median(quiet); m > 0 {
		return result{value: float64(median(during)) / float64(m)}, nil
	}
	return result{}, nil
}

// holdSessions logs in perIPLimit sessions from src and keeps them until
// release is called.
func holdSessions(p *peer, src string) (release func(), err error) {
	var held []*imapConn
	release = func() {
		for _, ic := range held {
			ic.c.Close()
		}
	}
	for i := 0; i < perIPLimit; i++ {
		ic, err := login(p.addr, src)
		if err != nil {
			release()
			return nil, fmt.Errorf("holding session %d from %s: %w", i, src, err)
		}
		held = append(held, ic)
	}
	return release, nil
}

// floodPassResult is one pass of the one-address flood.
type floodPassResult struct {
	cpu          time.Duration   // server CPU over the refused attempts
	refused      int             // attempts refused by the proxy
	lat          []time.Duration // each one's time to refusal
	kernel       bool            // the kernel dropped an attempt (imapgate-kernel)
	escalation   time.Duration   // from the pass's start to that drop
	escalatedCPU time.Duration   // server CPU over the SYNs sent after it
	syns         int
}

// floodPass makes `attempts` attempts from src, which is over its limit,
// each replaying hello; see flood.
func floodPass(p *peer, src string, attempts int, hello []byte) (r floodPassResult, err error) {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	if p.name == "imapgate-kernel" {
		d.Timeout = 200 * time.Millisecond // a dropped SYN: the connect times out
	}
	r.lat = make([]time.Duration, 0, attempts)
	start := time.Now()
	before := p.cpu()
	i := 0
	for ; i < attempts; i++ {
		t0 := time.Now()
		raw, err := d.Dial("tcp", p.addr)
		if errors.Is(err, syscall.ECONNRESET) {
			// Refused with a reset (imapgate, HAProxy, floor-reset) that
			// came before the connect returned: a refusal all the same.
			r.lat = append(r.lat, time.Since(t0))
			continue
		}
		if err != nil {
			if p.name == "imapgate-kernel" {
				r.kernel = true
				break
			}
			continue
		}
		served, err := helloAnswered(raw, hello)
		elapsed := time.Since(t0)
		raw.Close()
		if served {
			return r, fmt.Errorf("attempt %d over the per-address limit was served", i)
		}
		if err != nil {
			return r, fmt.Errorf("attempt %d: %w", i, err)
		}
		r.lat = append(r.lat, elapsed)
	}
	r.cpu, r.refused = p.cpu()-before, i
	if r.kernel {
		r.escalation = time.Since(start)
		r.syns = attempts - i
		before := p.cpu()
		if err := synFlood(src, p.addr, r.syns); err != nil {
			return r, err
		}
		r.escalatedCPU = p.cpu() - before
	}
	return r, nil
}

// recordClientHello returns the first flight of crypto/tls's client with
// clientTLS (a TLS 1.3 ClientHello), as a listener of its own reads it.
// The flood replays it: every peer refuses an attempt over its limit
// before it reads the hello, so a fresh one per attempt (an X25519 key
// generation and more) only loaded the load generator's core, which the
// honest clients and the upstream share.
func recordClientHello() ([]byte, error) {
	ln, err := sock.Listen("127.0.0.1:0") // plain TCP, as the peers' upstream
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			got <- nil
			return
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(c, body); err != nil {
			got <- nil
			return
		}
		got <- append(hdr[:], body...)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, clientTLS)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Handshake() // fails when the listener closes: only the hello matters
	c.Close()
	hello := <-got
	if hello == nil {
		return nil, errors.New("recording a ClientHello failed")
	}
	return hello, nil
}

// helloAnswered sends hello on raw and reads: served if the peer answers
// with any byte (a ServerHello), not if it closes or resets. A write that
// fails because the peer has closed already is a refusal too.
func helloAnswered(raw net.Conn, hello []byte) (served bool, err error) {
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	raw.Write(hello)
	var b [1]byte
	n, err := raw.Read(b[:])
	if n > 0 {
		return true, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, fmt.Errorf("no answer and no close within 5 s")
	}
	return false, nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// honestSource is the i-th honest client of the flood scenarios, each in
// a /24 of its own (127.30.0.1, 127.30.1.1, ...): imapgate's default
// rate_per_prefix (300 a minute) must not refuse the measurement itself.
func honestSource(i int) string { return fmt.Sprintf("127.30.%d.%d", i%250, i/250%250+1) }

// floodSource is the a-th flooding address, each in a /24 of its own
// (127.60.0.2 ...), apart from the honest clients' (source).
func floodSource(a int) string { return fmt.Sprintf("127.%d.%d.2", 60+a/250, a%250) }

// floodOpts size the table flood.
type floodOpts struct {
	conns, addrs int  // flood connections held, spread over addrs addresses
	halfHello    bool // send half a ClientHello and stall; else nothing
	honest       int  // honest sessions measured, before and during the flood
}

// honestRun is one batch of honest sessions (TLS 1.3, greeting, LOGIN,
// SELECT, LOGOUT), four at a time, each given 10 s and the batch 60 s: their
// latencies and failures (a session the batch had no time left to start
// is a failure).
func honestRun(p *peer, n int) (lat []time.Duration, failed []string) {
	var mu sync.Mutex
	end := time.Now().Add(60 * time.Second)
	parallel(n, 4, func(i int) error {
		start := time.Now()
		if start.After(end) {
			mu.Lock()
			failed = append(failed, "not started: the batch's 60 s were over")
			mu.Unlock()
			return nil
		}
		ic, err := dialIMAPDeadline(p.addr, honestSource(i), start.Add(10*time.Second))
		if err == nil {
			if err = ic.cmd("a", "LOGIN bench bench"); err != nil {
				ic.c.Close()
			}
		}
		if err == nil {
			err = ic.cmd("s", "SELECT INBOX")
			if err == nil {
				if lerr := ic.cmd("b", "LOGOUT"); lerr != nil && !errors.Is(lerr, io.EOF) {
					err = lerr
				}
			}
			ic.c.Close()
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed = append(failed, err.Error())
		} else {
			lat = append(lat, time.Since(start))
		}
		return nil
	})
	return lat, failed
}

// honestNice is the nice value of the honest clients' process (-honest-nice).
var honestNice int

// honestRunProc is honestRun in a process of its own (this binary with
// -honest-child): the honest clients then compete with the flood's ten
// thousand goroutines as one process with another, not inside one Go
// scheduler. The process runs at nice honestNice (nice(1), so every thread
// of it has that value): the flood generator shares the load generator's
// core and, at the same priority, took half of it from the honest clients
// (every peer's honest sessions were 2-3 times slower during the
// one-address flood, README "Floods"), which measured the generator, not
// the proxy. With a lower nice value the honest clients get the core when
// they need it, and the figures are the proxy's.
func honestRunProc(p *peer, n int) (lat []time.Duration, failed []string) {
	args := []string{os.Args[0], "-honest-child", p.addr, "-honest", strconv.Itoa(n)}
	if honestNice != 0 {
		args = append([]string{"nice", "-n", strconv.Itoa(honestNice)}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).Output()
	if err != nil {
		return nil, []string{fmt.Sprintf("honest client process: %v", err)}
	}
	var r honestResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, []string{fmt.Sprintf("honest client process: %v", err)}
	}
	return r.Lat, r.Failed
}

type honestResult struct {
	Lat    []time.Duration `json:"lat"`
	Failed []string        `json:"failed"`
}

// honestChild is the -honest-child process: n honest sessions against
// addr, the result as JSON on stdout.
func honestChild(addr string, n int) {
	lat, failed := honestRun(&peer{addr: addr}, n)
	json.NewEncoder(os.Stdout).Encode(honestResult{lat, failed})
}

// percentile of ds (sorted here), p in 0..100.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

// floodTable: honest sessions without a flood, then with o.conns silent
// (or half-hello) connections from o.addrs addresses held against the
// proxy, each reopened a second after the proxy closes it (5 s after a
// refusal at once), measured from 3 s after the flood's connections were
// all opened (the opening burst itself is the load generator's: it shares
// a core and a process with the honest clients). Figures: the honest
// sessions' p50 and p99 during the flood (ms), their p99 without it, and
// the honest sessions that failed.
func floodTable(p *peer, o floodOpts) (p50, p99, p99quiet result, failures int, err error) {
	quiet, qfailed := honestRunProc(p, o.honest)
	if len(qfailed) > 0 {
		return p50, p99, p99quiet, 0, fmt.Errorf("without a flood: %d sessions failed: %s", len(qfailed), qfailed[0])
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var opened atomic.Int64
	hello := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, make([]byte, 89)...)
	for i := 0; i < o.conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(floodSource(i % o.addrs))}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := d.Dial("tcp", p.addr)
				if err != nil {
					pause := time.Second
					if errors.Is(err, syscall.ECONNRESET) {
						pause = 5 * time.Second // refused at once, as below
					}
					time.Sleep(pause)
					continue
				}
				opened.Add(1)
				if o.halfHello {
					c.Write(hello)
				}
				done := make(chan struct{})
				go func() {
					select {
					case <-stop:
						c.Close()
					case <-done:
					}
				}()
				start := time.Now()
				io.Copy(io.Discard, c)
				close(done)
				c.Close()
				// Held until the proxy dropped it: open another a second
				// later. Refused at once (a rate limit): back off 5 s, as
				// a flood that wants to hold connections, not to be
				// refused, would.
				pause := time.Second
				if time.Since(start) < 100*time.Millisecond {
					pause = 5 * time.Second
				}
				select {
				case <-stop:
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	// The flood is in place once its connections are open (bounded: 20 s).
	for deadline := time.Now().Add(20 * time.Second); opened.Load() < int64(o.conns) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	lat, failed := honestRunProc(p, o.honest)
	close(stop)
	wg.Wait()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return result{value: ms(percentile(lat, 50))}, result{value: ms(percentile(lat, 99))},
		result{value: ms(percentile(quiet, 99))}, len(failed), nil
}
