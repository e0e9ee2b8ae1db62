package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"imapgate/cluster"
)

// The cluster scenario: the same replicas of imapgate (-replicas, all on
// the server core) with and without [cluster] sharing one Redis, in
// alternation round by round. Figures: server CPU per admitted session
// (the replicas'; Redis's CPU is reported apart), server CPU per refused
// attempt of a known offender (an address over max_per_ip), the admission
// time Redis adds (the replicas' own histogram of the admission script's
// round trip), and Redis commands per admitted session (INFO
// commandstats: EVALSHA calls during the session runs, heartbeats and
// ban syncs included). With -baseline BINARY, a third group, "baseline",
// runs that imapgate with [cluster] in the same alternation (an A/B of a
// change to the cluster code, in one run).

type replicaGroup struct {
	mode  string // "standalone" or "cluster"
	peers []*peer
	socks []string // admin sockets
}

func (s *peerSetup) startReplicas(mode, redisURL, prefix string, n int) (*replicaGroup, error) {
	g := &replicaGroup{mode: mode}
	for i := 0; i < n; i++ {
		addr := freePort()
		sock := filepath.Join(s.dir, fmt.Sprintf("%s%d.sock", mode, i))
		cl, gate := "", s.gate
		if mode == "baseline" {
			gate = s.baseline
		}
		if mode != "standalone" {
			cl = fmt.Sprintf("[cluster]\nredis = %q\nnode = \"bench%d\"\nkey_prefix = %q\n", redisURL, i, prefix)
		}
		cfg := filepath.Join(s.dir, fmt.Sprintf("%s%d.toml", mode, i))
		os.WriteFile(cfg, []byte(s.gateConfig(addr, filepath.Join(s.dir, mode+".log"), sock, true, cl)), 0o644)
		args := []string{"-c", strconv.Itoa(s.core), gate, "-config", cfg, "-grace", "0s"}
		if s.profile != "" && i == 0 {
			// Replica 0 of each mode; the last round's profiles stay.
			args = append(args, "-cpuprofile", s.profile+"."+mode)
		}
		cmd := exec.Command("taskset", args...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		p := &peer{name: fmt.Sprintf("%s%d", mode, i), addr: addr, cmd: cmd, pid: cmd.Process.Pid}
		g.peers, g.socks = append(g.peers, p), append(g.socks, sock)
		ready := false
		for j := 0; j < 100 && !ready; j++ {
			if resp, err := unixGet(sock, "/readyz"); err == nil {
				resp.Body.Close()
				ready = resp.StatusCode == 200
			}
			if !ready {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if !ready {
			g.stop()
			return nil, fmt.Errorf("%s replica %d did not start", mode, i)
		}
	}
	return g, nil
}

func (g *replicaGroup) stop() {
	for _, p := range g.peers {
		p.stop()
	}
}

func (g *replicaGroup) cpu() time.Duration {
	var d time.Duration
	for _, p := range g.peers {
		d += p.cpu()
	}
	return d
}

// metricSum adds an unlabelled metric over the replicas.
func (g *replicaGroup) metricSum(name string) float64 {
	sum := 0.0
	for _, sock := range g.socks {
		resp, err := unixGet(sock, "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
				v, _ := strconv.ParseFloat(f[1], 64)
				sum += v
			}
		}
		resp.Body.Close()
	}
	return sum
}

func unixGet(sock, path string) (*http.Response, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	return c.Get("http://imapgate" + path)
}

// Histograms the latency phase reads from the replicas: the admission
// script's round trip, and the wait for its verdict that the session saw.
const (
	admitBuckets = `imapgate_cluster_redis_seconds_bucket{op="admit",le="`
	waitBuckets  = `imapgate_cluster_verdict_wait_seconds_bucket{le="`
)

// histogram sums the replicas' histogram whose bucket lines start with
// prefix (admitBuckets, waitBuckets): bucket bounds (seconds) and
// cumulative counts.
func (g *replicaGroup) histogram(prefix string) (bounds []float64, counts []float64) {
	sum := map[float64]float64{}
	for _, sock := range g.socks {
		resp, err := unixGet(sock, "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			l := sc.Text()
			rest, ok := strings.CutPrefix(l, prefix)
			if !ok {
				continue
			}
			le, v, _ := strings.Cut(rest, `"} `)
			b, err1 := strconv.ParseFloat(le, 64)
			n, err2 := strconv.ParseFloat(v, 64)
			if err1 == nil && err2 == nil {
				sum[b] += n
			}
		}
		resp.Body.Close()
	}
	for b := range sum {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	for _, b := range bounds {
		counts = append(counts, sum[b])
	}
	return bounds, counts
}

// over is the share, in percent, of a cumulative histogram's samples above
// bound (one of its bucket bounds), exact where quantile interpolates.
func over(bounds, counts []float64, bound float64) float64 {
	if len(counts) == 0 || counts[len(counts)-1] == 0 {
		return 0
	}
	total := counts[len(counts)-1]
	for i, b := range bounds {
		if b >= bound {
			return 100 * (total - counts[i]) / total
		}
	}
	return 0
}

// minus subtracts an earlier reading of the same histogram from counts.
func minus(counts, before []float64) {
	for i := range counts {
		if i < len(before) {
			counts[i] -= before[i]
		}
	}
}

// quantile interpolates q within a cumulative histogram, in µs.
func quantile(bounds, counts []float64, q float64) float64 {
	if len(counts) == 0 || counts[len(counts)-1] == 0 {
		return 0
	}
	total := counts[len(counts)-1]
	target := q * total
	lo, prev := 0.0, 0.0
	for i, c := range counts {
		if c >= target {
			hi := bounds[i]
			if math.IsInf(hi, 1) {
				return lo * 1e6
			}
			frac := 0.0
			if c > prev {
				frac = (target - prev) / (c - prev)
			}
			return (lo + frac*(hi-lo)) * 1e6
		}
		lo, prev = bounds[i], c
	}
	return lo * 1e6
}

// redisInfo reads a few figures of Redis by redis-cli.
type redisInfo struct {
	url string
	pid int
}

func (r redisInfo) cli(args ...string) string {
	conn := []string{"-u", r.url}
	if u, err := url.Parse(r.url); err == nil && u.Scheme == "unix" {
		// redis-cli -u takes redis:// and rediss:// only.
		pass, _ := u.User.Password()
		conn = []string{"-s", u.Path, "--user", u.User.Username(), "--pass", pass}
	}
	out, _ := exec.Command("redis-cli", append(append(conn, "--no-auth-warning"), args...)...).Output()
	return string(out)
}

// evalshas counts the EVALSHA and EVAL calls Redis has served.
func (r redisInfo) evalshas() int64 {
	n, _ := r.scriptStats()
	return n
}

// scriptStats reads the EVALSHA and EVAL calls Redis has served and the
// µs it spent in them (INFO commandstats).
func (r redisInfo) scriptStats() (calls int64, usec float64) {
	for _, l := range strings.Split(r.cli("INFO", "commandstats"), "\n") {
		if strings.HasPrefix(l, "cmdstat_evalsha:") || strings.HasPrefix(l, "cmdstat_eval:") {
			_, rest, _ := strings.Cut(l, "calls=")
			v, rest, _ := strings.Cut(rest, ",")
			x, _ := strconv.ParseInt(v, 10, 64)
			calls += x
			_, rest, _ = strings.Cut(rest, "usec=")
			u, _, _ := strings.Cut(rest, ",")
			us, _ := strconv.ParseFloat(u, 64)
			usec += us
		}
	}
	return calls, usec
}

// rttFloor runs imapbench -rtt-child on core (GOMAXPROCS=1, as a
// replica): n PINGs one at a time through rueidis, with the replicas'
// client options. Its p50 and p99 (µs) are the round trip any Redis call
// costs a replica there, the floor under the admission script's.
func rttFloor(url string, core, n int) (p50, p99 float64, err error) {
	cmd := exec.Command("taskset", "-c", strconv.Itoa(core), os.Args[0], "-rtt-child", url, "-sessions", strconv.Itoa(n))
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("rtt child: %w", err)
	}
	var r rttResult
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, 0, fmt.Errorf("rtt child: %w", err)
	}
	return r.P50, r.P99, nil
}

type rttResult struct{ P50, P99 float64 }

// rttChild is the -rtt-child process: n PINGs, one at a time, through a
// rueidis client made as a replica makes it; p50 and p99 in µs as JSON.
func rttChild(url string, n int) {
	c, err := cluster.NewClient(cluster.Options{URL: url, Node: "imapbench-rtt"})
	check(err)
	defer c.Close()
	ctx := context.Background()
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		check(c.Do(ctx, c.B().Ping().Build()).Error())
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	json.NewEncoder(os.Stdout).Encode(rttResult{
		P50: float64(lat[len(lat)/2]) / 1e3, P99: float64(lat[len(lat)*99/100]) / 1e3})
}

func (r redisInfo) cpu() time.Duration {
	if r.pid == 0 {
		return 0
	}
	return (&peer{pid: r.pid}).cpu()
}

func newRedisInfo(url string) redisInfo {
	r := redisInfo{url: url}
	for _, l := range strings.Split(r.cli("INFO", "server"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "process_id:"); ok {
			r.pid, _ = strconv.Atoi(v)
		}
	}
	return r
}

// groupSessions runs n full sessions spread over the replicas, each
// worker pausing pace after each, and returns each one's time from dial
// to greeting.
func groupSessions(g *replicaGroup, n, workers int, pace time.Duration) ([]time.Duration, error) {
	return groupSessionsFrom(g, 0, n, workers, pace)
}

// groupSessionsFrom is groupSessions for sessions from..from+n-1 of a
// longer series (their sources and replicas).
func groupSessionsFrom(g *replicaGroup, from, n, workers int, pace time.Duration) ([]time.Duration, error) {
	lat := make([]time.Duration, n)
	err := parallel(n, workers, func(i int) error {
		if pace > 0 {
			time.Sleep(pace)
		}
		i += from
		start := time.Now()
		ic, err := dialIMAP(g.peers[i%len(g.peers)].addr, source(i))
		if err != nil {
			return err
		}
		lat[i-from] = time.Since(start)
		defer ic.c.Close()
		if err := ic.cmd("a", "LOGIN bench bench"); err != nil {
			return err
		}
		ic.cmd("b", "LOGOUT")
		return nil
	})
	return lat, err
}

// offenderSource is the known offender of the cluster scenario's flood:
// it holds its sessions (holdOffender), then tries more, round robin over
// the replicas (offenderAttempts), each refused.
const offenderSource = "127.250.250.250"

// holdOffender logs in the offender's sessions on g: perIPLimit in all
// with the cluster, perIPLimit on each replica without.
func holdOffender(g *replicaGroup) (release func(), err error) {
	hold := perIPLimit
	if g.mode == "standalone" {
		hold = perIPLimit * len(g.peers)
	}
	var held []*imapConn
	release = func() {
		for _, ic := range held {
			ic.c.Close()
		}
	}
	for i := 0; i < hold; i++ {
		ic, err := login(g.peers[i%len(g.peers)].addr, offenderSource)
		if err != nil {
			release()
			return nil, fmt.Errorf("holding session %d: %w", i, err)
		}
		held = append(held, ic)
	}
	return release, nil
}

// offenderAttempts makes attempts from..from+n-1 of the offender's flood
// (round robin over the replicas) and returns the replicas' CPU over them.
func offenderAttempts(g *replicaGroup, from, n int) (time.Duration, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(offenderSource)}}
	before := g.cpu()
	for i := from; i < from+n; i++ {
		raw, err := d.Dial("tcp", g.peers[i%len(g.peers)].addr)
		if err != nil {
			continue
		}
		c := tls.Client(raw, clientTLS)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		herr := c.Handshake()
		if herr == nil {
			// Refused after TLS is refused all the same: served means
			// the greeting came.
			line, _ := bufio.NewReader(c).ReadString('\n')
			if strings.HasPrefix(line, "* OK") {
				c.Close()
				return 0, fmt.Errorf("attempt %d over the limit was served (%s)", i, g.mode)
			}
		}
		c.Close()
	}
	return g.cpu() - before, nil
}

// clusterRun is the cluster scenario's flags.
type clusterRun struct {
	url                                  string
	replicas, rounds, sessions, attempts int
	redisCore                            int           // -1: Redis stays where it is
	pace                                 time.Duration // between the latency phase's sessions
	slices                               int           // the CPU phases' slices, the groups in turn
}

// pinRedis pins the Redis server to core and returns the undo (its
// former affinity).
func pinRedis(pid, core int) func() {
	out, err := exec.Command("taskset", "-pc", strconv.Itoa(core), strconv.Itoa(pid)).Output()
	check(err)
	// "pid N's current affinity list: 0,1\n..."
	first, _, _ := strings.Cut(string(out), "\n")
	_, old, _ := strings.Cut(first, "list: ")
	return func() { exec.Command("taskset", "-pc", strings.TrimSpace(old), strconv.Itoa(pid)).Run() }
}

// clusterBench runs the cluster scenario and prints its table.
func clusterBench(s *peerSetup, run clusterRun) {
	redisURL, replicas, rounds, sessions, attempts := run.url, run.replicas, run.rounds, run.sessions, run.attempts
	r := newRedisInfo(redisURL)
	where := "unpinned"
	if run.redisCore >= 0 && r.pid != 0 {
		defer pinRedis(r.pid, run.redisCore)()
		where = fmt.Sprintf("pinned to core %d", run.redisCore)
	}
	fmt.Printf("cluster scenario: %d replicas on core %d, Redis pid %d %s, %d rounds; latency phase: one session at a time, %s apart\n",
		replicas, s.core, r.pid, where, rounds, run.pace)
	type fig struct {
		session, flood, greet50, greet99, admit50, admit99, evalsha, redisCPU, hits []float64
		scriptUsec, ping50, ping99, wait50, wait99, waitOver                        []float64
		background                                                                  []float64 // CPU ms/s while the other groups ran
	}
	res := map[string]*fig{"standalone": {}, "cluster": {}, "baseline": {}}
	all := []string{"standalone", "cluster"}
	if s.baseline != "" {
		all = append(all, "baseline")
	}
	slices := run.slices
	for round := 0; round < rounds; round++ {
		// Each round starts with the next group: standalone, cluster,
		// standalone… (or with baseline: s c b, c b s, b s c). All of a
		// round's groups run at once, and the CPU figures come from slices
		// of sessions and of attempts made by the groups in turn, so that
		// the machine's own drift weighs on every group alike (see
		// floodInterleaved).
		modes := append(append([]string(nil), all[round%len(all):]...), all[:round%len(all)]...)
		groups := map[string]*replicaGroup{}
		for _, mode := range modes {
			prefix := fmt.Sprintf("imapgate-bench%d", time.Now().UnixNano())
			g, err := s.startReplicas(mode, redisURL, prefix, replicas)
			check(err)
			groups[mode] = g
		}
		type sums struct {
			cpu, redisCPU, floodCPU time.Duration
			evalsha                 int64
			busy                    time.Duration // wall time of its own slices
		}
		sum := map[string]*sums{}
		for _, mode := range modes {
			sum[mode] = &sums{}
		}
		// A group's CPU while the others run (its heartbeats and timers)
		// is left out of its figure; it is shown as a rate, to see that
		// it is too small to matter.
		phase0, phaseStart := map[string]time.Duration{}, time.Now()
		for _, mode := range modes {
			phase0[mode] = groups[mode].cpu()
		}
		check(inTurn(slices, sessions, len(modes), func(k, from, n int) error {
			mode := modes[k]
			g, a := groups[mode], sum[mode]
			t0, cpu0, ev0, rc0 := time.Now(), g.cpu(), r.evalshas(), r.cpu()
			if _, err := groupSessionsFrom(g, from, n, 8, 0); err != nil {
				return err
			}
			time.Sleep(100 * time.Millisecond) // the sessions' ends
			a.cpu += g.cpu() - cpu0
			a.evalsha += r.evalshas() - ev0
			a.redisCPU += r.cpu() - rc0
			a.busy += time.Since(t0)
			return nil
		}))
		phase := time.Since(phaseStart)
		for _, mode := range modes {
			f, a := res[mode], sum[mode]
			if idle := phase - a.busy; idle > 0 {
				f.background = append(f.background, float64(groups[mode].cpu()-phase0[mode]-a.cpu)/float64(time.Millisecond)/idle.Seconds())
			}
			f.session = append(f.session, float64(a.cpu)/float64(time.Millisecond)/float64(sessions))
			f.evalsha = append(f.evalsha, float64(a.evalsha)/float64(sessions))
			f.redisCPU = append(f.redisCPU, float64(a.redisCPU)/float64(time.Microsecond)/float64(sessions))
		}
		for _, mode := range modes {
			g, f := groups[mode], res[mode]
			// Latency without load: sessions one at a time, so the figure
			// is the round trip and not the wait for a saturated core.
			_, c0 := g.histogram(admitBuckets)
			_, w0 := g.histogram(waitBuckets)
			sc0, su0 := r.scriptStats()
			lat, err := groupSessions(g, sessions/4, 1, run.pace)
			check(err)
			if sc1, su1 := r.scriptStats(); mode != "standalone" && sc1 > sc0 {
				f.scriptUsec = append(f.scriptUsec, (su1-su0)/float64(sc1-sc0))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			f.greet50 = append(f.greet50, float64(lat[len(lat)/2])/1e3)
			f.greet99 = append(f.greet99, float64(lat[len(lat)*99/100])/1e3)
			if mode != "standalone" {
				b, c := g.histogram(admitBuckets)
				minus(c, c0)
				wb, wc := g.histogram(waitBuckets)
				minus(wc, w0)
				f.wait50 = append(f.wait50, quantile(wb, wc, 0.5))
				f.wait99 = append(f.wait99, quantile(wb, wc, 0.99))
				f.waitOver = append(f.waitOver, over(wb, wc, 300e-6))
				f.admit50 = append(f.admit50, quantile(b, c, 0.5))
				f.admit99 = append(f.admit99, quantile(b, c, 0.99))
				p50, p99, err := rttFloor(redisURL, s.core, sessions/4)
				check(err)
				f.ping50, f.ping99 = append(f.ping50, p50), append(f.ping99, p99)
			}
		}
		hits0 := map[string]float64{}
		var releases []func()
		for _, mode := range modes {
			release, err := holdOffender(groups[mode])
			check(err)
			releases = append(releases, release)
			hits0[mode] = groups[mode].metricSum("imapgate_cluster_local_cache_hits_total")
		}
		check(inTurn(slices, attempts, len(modes), func(k, from, n int) error {
			cpu, err := offenderAttempts(groups[modes[k]], from, n)
			sum[modes[k]].floodCPU += cpu
			return err
		}))
		for _, mode := range modes {
			g, f := groups[mode], res[mode]
			fl := float64(sum[mode].floodCPU) / float64(time.Microsecond) / float64(attempts)
			f.flood = append(f.flood, fl)
			f.hits = append(f.hits, (g.metricSum("imapgate_cluster_local_cache_hits_total")-hits0[mode])/float64(attempts))
			wait := ""
			if mode != "standalone" {
				wait = fmt.Sprintf(", verdict wait p50 / p99 %.0f / %.0f µs, over 300 µs %.2f%%, PING p99 %.0f µs",
					f.wait50[len(f.wait50)-1], f.wait99[len(f.wait99)-1], f.waitOver[len(f.waitOver)-1], f.ping99[len(f.ping99)-1])
			}
			fmt.Printf("round %d %-10s session %.3f ms, flood %.1f µs/attempt, greeting p50 %.0f µs%s\n", round+1, mode,
				f.session[len(f.session)-1], fl, f.greet50[len(f.greet50)-1], wait)
		}
		for _, release := range releases {
			release()
		}
		for _, g := range groups {
			g.stop()
		}
	}
	st, cl := res["standalone"], res["cluster"]
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nfigure\tstandalone\tcluster\tcluster/standalone\tbudget")
	ratio := func(a, b []float64) string {
		r, ok := pairedRatio(a, b)
		if !ok {
			return "-"
		}
		return fmt.Sprintf("%.3f", r)
	}
	fmt.Fprintf(tw, "server CPU per admitted session (ms)\t%.3f\t%.3f\t%s\t<= 1.15\n", medianF(st.session), medianF(cl.session), ratio(cl.session, st.session))
	fmt.Fprintf(tw, "  left out: the group's CPU while the others ran (ms/s)\t%.2f\t%.2f\t-\t-\n", medianF(st.background), medianF(cl.background))
	fmt.Fprintf(tw, "server CPU per refused attempt of a known offender (µs)\t%.1f\t%.1f\t%s\t<= 1.1\n", medianF(st.flood), medianF(cl.flood), ratio(cl.flood, st.flood))
	fmt.Fprintf(tw, "refused attempts answered from memory (no Redis call)\t-\t%.1f%%\t-\t-\n", 100*medianF(cl.hits))
	fmt.Fprintf(tw, "admission script round trip p50 / p99, one session at a time (µs)\t-\t%.0f / %.0f\t-\t-\n", medianF(cl.admit50), medianF(cl.admit99))
	fmt.Fprintf(tw, "the session's wait for the verdict, p50 / p99 (µs; the Redis call runs during the ClientHello and the TLS handshake)\t-\t%.0f / %.0f\t-\tp99 <= 300\n", medianF(cl.wait50), medianF(cl.wait99))
	fmt.Fprintf(tw, "  sessions that waited over 300 µs (the same budget: at most 1%%)\t-\t%.2f%%\t-\t<= 1%%\n", medianF(cl.waitOver))
	fmt.Fprintf(tw, "  of which: Redis's own time per script call, the latency phase's (µs)\t-\t%.0f\t-\t-\n", medianF(cl.scriptUsec))
	fmt.Fprintf(tw, "  floor: PING round trip, one at a time, rueidis on the replicas' core, p50 / p99 (µs)\t-\t%.0f / %.0f\t-\t-\n", medianF(cl.ping50), medianF(cl.ping99))
	fmt.Fprintf(tw, "time to greeting p50 / p99, one session at a time (µs)\t%.0f / %.0f\t%.0f / %.0f\t%+.0f / %+.0f\t-\n", medianF(st.greet50), medianF(st.greet99),
		medianF(cl.greet50), medianF(cl.greet99), medianF(cl.greet50)-medianF(st.greet50), medianF(cl.greet99)-medianF(st.greet99))
	fmt.Fprintf(tw, "Redis commands (EVALSHA) per admitted session\t-\t%.2f\t-\t<= 2\n", medianF(cl.evalsha))
	fmt.Fprintf(tw, "Redis CPU per admitted session (µs)\t-\t%.1f\t-\t-\n", medianF(cl.redisCPU))
	tw.Flush()
	fmt.Println("(a figure is the median of the rounds; a ratio is the median of the per-round ratios, which is what a budget is held to)")
	if s.baseline == "" {
		return
	}
	bl := res["baseline"]
	fmt.Printf("\nbaseline %s (with [cluster]) in the same run:\n", s.baseline)
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tbaseline\tcluster\tbaseline/standalone\tcluster/baseline")
	fmt.Fprintf(tw, "server CPU per admitted session (ms)\t%.3f\t%.3f\t%s\t%s\n", medianF(bl.session), medianF(cl.session), ratio(bl.session, st.session), ratio(cl.session, bl.session))
	fmt.Fprintf(tw, "server CPU per refused attempt of a known offender (µs)\t%.1f\t%.1f\t%s\t%s\n", medianF(bl.flood), medianF(cl.flood), ratio(bl.flood, st.flood), ratio(cl.flood, bl.flood))
	fmt.Fprintf(tw, "admission script round trip p50 / p99, one at a time (µs)\t%.0f / %.0f\t%.0f / %.0f\t-\t-\n", medianF(bl.admit50), medianF(bl.admit99), medianF(cl.admit50), medianF(cl.admit99))
	fmt.Fprintf(tw, "the session's wait for the verdict p50 / p99 (µs)\t%.0f / %.0f\t%.0f / %.0f\t-\t-\n", medianF(bl.wait50), medianF(bl.wait99), medianF(cl.wait50), medianF(cl.wait99))
	fmt.Fprintf(tw, "  sessions that waited over 300 µs\t%.2f%%\t%.2f%%\t-\t-\n", medianF(bl.waitOver), medianF(cl.waitOver))
	fmt.Fprintf(tw, "time to greeting p50 / p99, one at a time (µs)\t%.0f / %.0f\t%.0f / %.0f\t-\t-\n", medianF(bl.greet50), medianF(bl.greet99), medianF(cl.greet50), medianF(cl.greet99))
	fmt.Fprintf(tw, "Redis commands (EVALSHA) per admitted session\t%.2f\t%.2f\t-\t-\n", medianF(bl.evalsha), medianF(cl.evalsha))
	fmt.Fprintf(tw, "Redis CPU per admitted session (µs)\t%.1f\t%.1f\t-\t%s\n", medianF(bl.redisCPU), medianF(cl.redisCPU), ratio(cl.redisCPU, bl.redisCPU))
	tw.Flush()
}
