// Command imapbench measures imapgate side by side with HAProxy (TCP mode,
// ssl crt, a conn_cur stick-table per-address reject) and nginx's stream
// proxy (ssl, limit_conn), each a single process pinned to one core, in
// front of the same fast plaintext IMAP upstream, with one generated ECDSA
// P-256 certificate. It alternates the peers round by round and prints each
// peer's median and, against HAProxy, the median of the per-round ratios.
// Scenario "table" floods the proxy with 10,000 silent or half-ClientHello
// connections from 1,000 addresses while honest clients log in; peer
// "imapgate-kernel" is imapgate with [kernel] nftables = true, which needs
// -netns (a network namespace of imapbench's own, as root). Loopback only;
// bounded in time.
//
//	integration/bench/run.sh            installs the peers and runs this
//	go run ./cmd/imapbench -h
//
// With -cluster URL it runs the cluster scenario instead (cluster.go):
// imapgate replicas with and without [cluster] sharing that Redis.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/gateway"
	"imapgate/internal/rlimit"
	"imapgate/limiter"
)

type scenario struct {
	name, figure, unit string
	budget             float64 // ratio to HAProxy; 0 for none
	lowerIsBetter      bool
}

var scenarios = []scenario{
	{"session", "server CPU per full session (TLS 1.3, LOGIN, LOGOUT)", "ms", 0.6, true},
	{"idle", "server RSS per idle session in IDLE", "KiB", 1.0, true},
	{"bulk", "server CPU per GB relayed (FETCH 1 MiB, 4 sessions)", "s/GB", 0.8, true},
	{"flood-cpu", "server CPU per refused attempt", "µs", 0.7, true},
	{"flood-latency", "time to refusal (median)", "µs", 1.0, true},
	{"flood-honest", "honest session median during the flood / without it", "ratio", 0, true},
	{"flood-escalation", "time until the kernel drops the flooder (imapgate-kernel)", "s", 0, true},
	{"flood-escalated-cpu", "server CPU per attempt once dropped in the kernel (imapgate-kernel)", "µs", 0, true},
	{"table-quiet-p99", "honest session (TLS, LOGIN, SELECT, LOGOUT) without a flood, p99", "ms", 0, true},
	{"table-silent-p50", "same, during a silent table flood, p50", "ms", 0, true},
	{"table-silent-p99", "same, during a silent table flood, p99", "ms", 0, true},
	{"table-silent-failed", "honest sessions failed during the silent flood", "count", 0, true},
	{"table-half-p50", "same, during a half-ClientHello flood, p50", "ms", 0, true},
	{"table-half-p99", "same, during a half-ClientHello flood, p99", "ms", 0, true},
	{"table-half-failed", "honest sessions failed during the half-ClientHello flood", "count", 0, true},
}

func main() {
	rounds := flag.Int("rounds", 3, "rounds; the peers alternate within each")
	sessions := flag.Int("sessions", 2000, "full sessions per measurement")
	idle := flag.Int("idle", 9000, "idle sessions (each needs 2 descriptors here and 2 in the proxy)")
	fetches := flag.Int("fetches", 64, "1 MiB FETCHes per bulk session")
	attempts := flag.Int("flood", 3000, "refused attempts in the flood scenario")
	floodSlices := flag.Int("flood-slices", 10, "flood and cluster scenarios: the CPU figures' attempts (and the cluster's sessions) are made in this many slices, the peers (groups) in turn within each, all running (imapgate-kernel apart)")
	floodHonest := flag.Int("flood-honest", 200, "flood scenario: honest sessions timed without the flood and during it (each side)")
	peersFlag := flag.String("peers", "haproxy,imapgate,nginx", "peers to measure (haproxy, imapgate, nginx, imapgate-kernel, baseline; floor: accept and close only, built from integration/bench/floor.c, flood scenario only; floor-reset: the same closing with a reset, as HAProxy and imapgate refuse)")
	gateProcs := flag.Int("gate-procs", 1, "GOMAXPROCS of the imapgate peers (pinned to -core all the same; 2 is what imapgate has on a two-core machine)")
	serverCore := flag.Int("core", 0, "the core the proxies are pinned to (run this tool on another)")
	profile := flag.String("cpuprofile", "", "write imapgate's CPU profile to `file` (its last run; with -cluster, replica 0's of the last round to file.standalone and file.cluster)")
	only := flag.String("only", "", "comma-separated scenarios to run (session, idle, bulk, flood, table); default all")
	baseline := flag.String("baseline", "", "also measure this imapgate `binary` as peer \"baseline\" (A/B of a change; with -cluster, a third group of replicas running it with [cluster])")
	clusterURL := flag.String("cluster", "", "run the cluster scenario instead: replicas with and without [cluster] sharing the Redis at this `URL`")
	replicas := flag.Int("replicas", 2, "replicas in the cluster scenario")
	redisCore := flag.Int("redis-core", -1, "cluster scenario: pin the Redis server to this core for the run (taskset -p; its affinity is restored after); -1 leaves it where it is")
	pace := flag.Duration("pace", 0, "cluster scenario: pause between the sessions run one at a time (latency figures); 0: back to back, as before")
	floodConns := flag.Int("flood-conns", 10000, "table scenario: flood connections held against the proxy")
	floodAddrs := flag.Int("flood-addrs", 1000, "table scenario: addresses the flood comes from")
	honest := flag.Int("honest", 200, "table scenario: honest sessions measured without and during each flood")
	flag.IntVar(&honestNice, "honest-nice", -10, "flood and table scenarios: the honest clients' process runs at this nice value (negative needs root; 0: as the flood), so that the flood generator, which shares its core, does not slow them: the figures are then the proxy's")
	honestChildAddr := flag.String("honest-child", "", "internal: run -honest honest sessions against `addr` and print their figures as JSON")
	rttChildURL := flag.String("rtt-child", "", "internal: time -sessions Redis PINGs one at a time through rueidis at this `URL` and print p50 and p99 as JSON")
	netns := flag.Bool("netns", false, "run in a network namespace of its own (unshare -n, as root): needed for peer imapgate-kernel, whose nftables table must not touch the host's")
	flag.Parse()
	if *honestChildAddr != "" {
		honestChild(*honestChildAddr, *honest)
		return
	}
	if *rttChildURL != "" {
		rttChild(*rttChildURL, *sessions)
		return
	}
	if *netns {
		enterNetns() // returns inside the namespace
	}

	fmt.Printf("imapbench %s on %d cores (%s); proxies pinned to core %d\n",
		time.Now().Format("2006-01-02"), cores(), cpuModel(), *serverCore)
	*idle = fitIdle(*idle)
	dir, err := os.MkdirTemp("", "imapbench")
	check(err)
	defer os.RemoveAll(dir)
	setup, err := prepare(dir, *serverCore)
	check(err)
	setup.gateProcs = *gateProcs
	if *baseline != "" {
		setup.baseline, err = filepath.Abs(*baseline)
		check(err)
		if !strings.Contains(*peersFlag, "baseline") {
			*peersFlag += ",baseline"
		}
	}
	if *profile != "" {
		setup.profile, _ = filepath.Abs(*profile)
		idleHook = func(p *peer) {
			if p.name != "imapgate" {
				return
			}
			out := setup.profile + ".heap"
			exec.Command("curl", "-s", "--unix-socket", filepath.Join(dir, "admin.sock"),
				"-o", out, "http://imapgate/debug/pprof/heap").Run()
			exec.Command("curl", "-s", "--unix-socket", filepath.Join(dir, "admin.sock"),
				"-o", setup.profile+".goroutine", "http://imapgate/debug/pprof/goroutine?debug=1").Run()
			exec.Command("curl", "-s", "--unix-socket", filepath.Join(dir, "admin.sock"),
				"-o", setup.profile+".metrics", "http://imapgate/metrics").Run()
		}
	}

	if *clusterURL != "" {
		clusterBench(setup, clusterRun{url: *clusterURL, replicas: *replicas, rounds: *rounds, sessions: *sessions, attempts: *attempts, redisCore: *redisCore, pace: *pace, slices: *floodSlices})
		return
	}

	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		if s != "" {
			want[s] = true
		}
	}
	run := func(s string) bool { return len(want) == 0 || want[s] }

	peers := strings.Split(*peersFlag, ",")
	results := map[string]map[string][]float64{} // scenario -> peer -> values
	add := func(sc, p string, r result) {
		if results[sc] == nil {
			results[sc] = map[string][]float64{}
		}
		results[sc][p] = append(results[sc][p], r.value)
	}
	deadline := time.Now().Add(30 * time.Minute)
	for round := 0; round < *rounds && time.Now().Before(deadline); round++ {
		order := append(peers[round%len(peers):], peers[:round%len(peers)]...)
		if run("flood") {
			floodRound(setup, order, round, *attempts, *floodSlices, *floodHonest, add)
		}
		for _, name := range order {
			if isFloor(name) {
				continue // the flood's refusals are all a floor has
			}
			perPeer := run("session") || run("bulk") || run("idle") || run("flood") && name == "imapgate-kernel"
			if !perPeer && !run("table") {
				continue
			}
			p, err := setup.start(name, "")
			check(err)
			fmt.Printf("round %d: %s (pid %d) ...", round+1, name, p.pid)
			if run("session") {
				r, err := fullSessions(p, *sessions, 8)
				check(err)
				add("session", name, r)
				fmt.Printf(" session %.3f ms", r.value)
			}
			if run("flood") && name == "imapgate-kernel" { // the others: floodRound
				f, err := flood(p, *attempts, *floodHonest)
				check(err)
				add("flood-cpu", name, f.cpu)
				add("flood-latency", name, f.latency)
				add("flood-honest", name, f.honest)
				fmt.Printf(" flood %.1f µs/%.0f µs, honest ×%.2f", f.cpu.value, f.latency.value, f.honest.value)
				if f.kernel {
					add("flood-escalation", name, f.escalation)
					add("flood-escalated-cpu", name, f.escalatedCPU)
					fmt.Printf(", kernel drop after %.2f s, then %.2f µs/attempt", f.escalation.value, f.escalatedCPU.value)
				}
			}
			if run("bulk") {
				r, err := bulk(p, 4, *fetches)
				check(err)
				add("bulk", name, r)
				fmt.Printf(" bulk %.2f s/GB", r.value)
			}
			if run("idle") {
				r, err := idleSessions(p, *idle, 8)
				check(err)
				add("idle", name, r)
				fmt.Printf(" idle %.1f KiB", r.value)
			}
			p.stop()
			if run("table") {
				// imapgate as shipped (table.max 4096, default limits).
				p, err := setup.start(name, "flood")
				check(err)
				for _, half := range []bool{false, true} {
					kind := map[bool]string{false: "silent", true: "half"}[half]
					p50, p99, quiet, failed, err := floodTable(p, floodOpts{conns: *floodConns, addrs: *floodAddrs, halfHello: half, honest: *honest})
					check(err)
					add("table-quiet-p99", name, quiet)
					add("table-"+kind+"-p50", name, p50)
					add("table-"+kind+"-p99", name, p99)
					add("table-"+kind+"-failed", name, result{value: float64(failed)})
					fmt.Printf(" table %s: p50 %.1f ms p99 %.1f ms (quiet p99 %.1f ms), %d failed", kind, p50.value, p99.value, quiet.value, failed)
				}
				p.stop()
			}
			fmt.Println()
		}
	}
	report(os.Stdout, peers, results)
	floorReport(os.Stdout, results, *attempts)
	if run("admission") || len(want) == 0 {
		admission(os.Stdout)
	}
}

// floodRound is one round of the flood scenario for every peer but
// imapgate-kernel: all of them running, their CPU per refused attempt and
// time to refusal measured in turn (floodInterleaved), then each one's
// honest sessions during a flood, one peer at a time.
func floodRound(setup *peerSetup, order []string, round, attempts, slices, honest int, add func(sc, p string, r result)) {
	hello, err := recordClientHello()
	check(err)
	var ps []*peer
	defer func() {
		for _, p := range ps {
			p.stop()
		}
	}()
	for _, name := range order {
		if name == "imapgate-kernel" {
			continue
		}
		p, err := setup.start(name, "")
		check(err)
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return
	}
	figs, err := floodInterleaved(ps, attempts, slices, hello)
	check(err)
	fmt.Printf("round %d: flood in turn (%d slices):", round+1, slices)
	for _, p := range ps {
		f := figs[p.name]
		add("flood-cpu", p.name, f.cpu)
		add("flood-latency", p.name, f.latency)
		fmt.Printf(" %s %.1f µs/%.0f µs", p.name, f.cpu.value, f.latency.value)
	}
	fmt.Println()
	for _, p := range ps {
		if isFloor(p.name) {
			continue
		}
		h, err := floodHonest(p, attempts, honest, hello)
		check(err)
		add("flood-honest", p.name, h)
		fmt.Printf("round %d: %s honest ×%.2f during a flood\n", round+1, p.name, h.value)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "imapbench:", err)
		os.Exit(1)
	}
}

// cores counts the machine's processors (runtime.NumCPU honours this
// process's affinity, which the run script narrows to one core).
func cores() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + strings.Count(string(b[:min(len(b), 10)]), "processor")
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

// fitIdle lowers the idle count to what the open-file limit allows, and
// says so: this process holds two descriptors per idle session (the client
// end and the upstream's end), as does the proxy.
func fitIdle(n int) int {
	soft, _, _ := rlimit.RaiseOpenFiles()
	fits := int(soft-200) / 2
	if n > fits {
		fmt.Printf("note: the open-file limit is %d, so at most %d idle sessions fit (2 descriptors each here and in the proxy); measuring %d instead of %d\n",
			soft, fits, fits, n)
		return fits
	}
	return n
}

// prepare writes the certificate, starts the upstream and builds imapgate.
func prepare(dir string, core int) (*peerSetup, error) {
	c, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	s := &peerSetup{dir: dir, core: core,
		cert: filepath.Join(dir, "both.pem"), certOnly: filepath.Join(dir, "cert.pem"), keyOnly: filepath.Join(dir, "key.pem")}
	os.WriteFile(s.cert, append(append([]byte{}, certPEM...), keyPEM...), 0o600)
	os.WriteFile(s.certOnly, certPEM, 0o600)
	os.WriteFile(s.keyOnly, keyPEM, 0o600)
	up, err := startUpstream()
	if err != nil {
		return nil, err
	}
	s.upstream = up.addr()
	s.gate = filepath.Join(dir, "imapgate")
	if out, err := exec.Command("go", "build", "-o", s.gate, "./cmd/imapgate").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build imapgate (run from the repository root): %v\n%s", err, out)
	}
	return s, nil
}

func medianF(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// pairedRatio is the median over rounds of a[i]/b[i]. Within a round the
// peers run back to back, so the machine's slow drift (on these shared
// machines a peer's figure moves by a third within minutes) cancels in
// each round's ratio, where a ratio of medians would mix rounds.
func pairedRatio(a, b []float64) (float64, bool) {
	var rs []float64
	for i := 0; i < len(a) && i < len(b); i++ {
		if b[i] > 0 {
			rs = append(rs, a[i]/b[i])
		}
	}
	return medianF(rs), len(rs) > 0
}

func report(w *os.File, peers []string, results map[string]map[string][]float64) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\tfigure\t")
	for _, p := range peers {
		fmt.Fprintf(tw, "%s\t", p)
	}
	ab := slices.Contains(peers, "baseline")
	kern := slices.Contains(peers, "imapgate-kernel")
	fmt.Fprintf(tw, "imapgate/haproxy\tbudget\t")
	if kern {
		fmt.Fprintf(tw, "imapgate-kernel/haproxy\t")
	}
	if ab {
		fmt.Fprintf(tw, "imapgate/baseline")
	}
	fmt.Fprintln(tw)
	for _, sc := range scenarios {
		byPeer := results[sc.name]
		if byPeer == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\t", sc.name, sc.figure, sc.unit)
		for _, p := range peers {
			if len(byPeer[p]) == 0 {
				fmt.Fprintf(tw, "-\t")
				continue
			}
			fmt.Fprintf(tw, "%.3g\t", medianF(byPeer[p]))
		}
		ratio := "-"
		if r, ok := pairedRatio(byPeer["imapgate"], byPeer["haproxy"]); ok {
			ratio = fmt.Sprintf("%.3f", r)
		}
		budget := "-"
		if sc.budget > 0 {
			budget = fmt.Sprintf("<= %.1f", sc.budget)
		}
		fmt.Fprintf(tw, "%s\t%s\t", ratio, budget)
		if kern {
			// Once escalated, the kernel path's cost per attempt is set
			// against HAProxy's cost per refusal.
			against := byPeer["haproxy"]
			if sc.name == "flood-escalated-cpu" {
				against = results["flood-cpu"]["haproxy"]
			}
			kr := "-"
			if r, ok := pairedRatio(byPeer["imapgate-kernel"], against); ok {
				kr = fmt.Sprintf("%.3f", r)
			}
			fmt.Fprintf(tw, "%s\t", kr)
		}
		if r, ok := pairedRatio(byPeer["imapgate"], byPeer["baseline"]); ab && ok {
			fmt.Fprintf(tw, "%.3f", r)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintln(w, "(a peer's figure is the median of its rounds; a ratio is the median of the per-round ratios, which is what a budget is held to)")
}

// isFloor says whether peer name is a floor: accept and close only.
func isFloor(name string) bool { return name == "floor" || name == "floor-reset" }

// floorReport sets the flood's CPU per refused attempt against the floor
// peers (accept and close, nothing else; "floor-reset" closing with a
// reset, as HAProxy and imapgate refuse), round by round: each peer's
// multiple of a floor, and what its own code adds above it. A budget
// stated against HAProxy is below what any proxy can reach when it is
// below the floor.
func floorReport(w *os.File, results map[string]map[string][]float64, attempts int) {
	cpu := results["flood-cpu"]
	for _, f := range []struct{ name, what string }{
		{"floor", "accept4 and close, FIN"},
		{"floor-reset", "accept4, SO_LINGER 0 and close: a reset, as HAProxy and imapgate refuse"},
	} {
		floor := cpu[f.name]
		if len(floor) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nflood CPU per refused attempt against %s (%s; %.1f µs, median of %d round(s)):\n", f.name, f.what, medianF(floor), len(floor))
		// CPU is read in clock ticks of 10 ms (USER_HZ): over few attempts
		// one tick more or less moves a figure visibly.
		if tick := 10e3 / float64(attempts); tick > 0.02*medianF(floor) {
			enough := int(math.Ceil(10e3/(0.02*medianF(floor))/1000)) * 1000
			fmt.Fprintf(w, "  (one 10 ms clock tick is %.1f µs per attempt over %d attempts, over 2 %% of the floor: take -flood %d or more for figures to set against each other)\n", tick, attempts, enough)
		}
		for _, name := range []string{"haproxy", "nginx", "imapgate", "baseline"} {
			vs := cpu[name]
			if len(vs) == 0 {
				continue
			}
			var above []float64
			for i := 0; i < len(vs) && i < len(floor); i++ {
				above = append(above, vs[i]-floor[i])
			}
			r, _ := pairedRatio(vs, floor)
			fmt.Fprintf(w, "  %-9s %.2f× the floor; its own code %+.1f µs per attempt\n", name, r, medianF(above))
		}
		if h := cpu["haproxy"]; len(h) > 0 {
			r, _ := pairedRatio(floor, h)
			fmt.Fprintf(w, "  %s is %.2f× HAProxy's figure\n", f.name, r)
		}
	}
}

// admission measures imapgate's admission decision with 1 M addresses
// tracked, in this process (the peers have no equivalent figure).
func admission(w *os.File) {
	const tracked = 1 << 20
	p := gateway.Policy(config.Default())
	p.Limits.RatePerIP = limiter.Rate{Burst: 1 << 20, Per: time.Second}
	p.Limits.RatePerPrefix = limiter.Rate{Burst: 1 << 20, Per: time.Second}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	l, _ := limiter.New(p, limiter.Options{RateEntries: tracked})
	now := time.Now()
	addr := func(i uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	for i := uint32(0); i < tracked; i++ {
		t, _ := l.Admit(addr(i), now)
		t.Release()
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	const n = 2_000_000
	start := time.Now()
	x := uint32(1)
	for i := 0; i < n; i++ {
		x = x*1664525 + 1013904223
		t, _ := l.Admit(addr(x%tracked), now)
		t.Release()
	}
	per := time.Since(start) / n
	fmt.Fprintf(w, "\nadmission (imapgate only): %d ns per decision with %d addresses tracked (budget <= 1000 ns); %.0f bytes per tracked address (budget <= 150)\n",
		per.Nanoseconds(), tracked, float64(m1.HeapAlloc-m0.HeapAlloc)/tracked)
	runtime.KeepAlive(l)
}
