package integration

// Cluster tests: several imapgate processes on loopback sharing one real
// Redis (integration/redis/setup.sh start). They are TestRealRedis…: with
// CI=true and no Redis set up they fail, otherwise they skip with the
// command to run.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"

	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"imapgate/certs"
	"imapgate/internal/redistest"
)

var (
	gateBinOnce sync.Once
	gateBin     string
	gateBinErr  error
)

// imapgateBinary builds cmd/imapgate once per test run.
func imapgateBinary(t *testing.T) string {
	t.Helper()
	gateBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "imapgate-bin")
		if err != nil {
			gateBinErr = err
			return
		}
		gateBin = filepath.Join(dir, "imapgate")
		out, err := exec.Command("go", "build", "-o", gateBin, "imapgate/cmd/imapgate").CombinedOutput()
		if err != nil {
			gateBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if gateBinErr != nil {
		t.Fatal(gateBinErr)
	}
	return gateBin
}

// freeAddr returns a loopback address and port no socket uses now, for a
// node to listen on. The address is a random 127.77.x.y, not 127.0.0.1:
// a port found free on 127.0.0.1 and closed again was taken meanwhile by
// another test's socket there (its listener or a connection's source
// port) before the node bound it; on an address of its own only a
// wildcard listener on the same port can collide.
func freeAddr(t *testing.T) string {
	t.Helper()
	for try := 0; ; try++ {
		ip := fmt.Sprintf("127.77.%d.%d", 1+rand.IntN(254), 1+rand.IntN(254))
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			if try < 10 {
				continue
			}
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
}

// clusterCert writes one certificate (and key) for every node, as a
// cluster behind one name has.
func clusterCert(t *testing.T, dir string) string {
	t.Helper()
	c, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	b := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	path := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// gateNode is one imapgate process of a test cluster.
type gateNode struct {
	id, addr, admin, logPath string
	cfgPath                  string
	cmd                      *exec.Cmd
}

type testCluster struct {
	t      *testing.T
	dir    string
	prefix string
	url    string
	cert   string
	nodes  []*gateNode
}

// startCluster starts n imapgate processes sharing Redis at url under a
// key prefix of their own; extra is TOML added to each config (limits,
// and keys of [cluster] after its header).
func startCluster(t *testing.T, n int, url, limits, clusterExtra string) *testCluster {
	t.Helper()
	return startClusterPrefix(t, n, url, fmt.Sprintf("imapgate-t%d", time.Now().UnixNano()), limits, clusterExtra)
}

// startClusterPrefix is startCluster with the key prefix given.
func startClusterPrefix(t *testing.T, n int, url, prefix, limits, clusterExtra string) *testCluster {
	t.Helper()
	dir := t.TempDir()
	tc := &testCluster{t: t, dir: dir, url: url, prefix: prefix, cert: clusterCert(t, dir)}
	t.Cleanup(tc.stop)
	for i := 0; i < n; i++ {
		tc.add(url, limits, clusterExtra)
	}
	return tc
}

// add starts one more node (n1, n2, … in order) of the cluster, through
// Redis at url.
func (tc *testCluster) add(url, limits, clusterExtra string) *gateNode {
	t := tc.t
	t.Helper()
	g := &gateNode{id: fmt.Sprintf("n%d", len(tc.nodes)+1), addr: freeAddr(t), admin: freeAddr(t)}
	g.cfgPath = filepath.Join(tc.dir, g.id+".toml")
	cfg := fmt.Sprintf(`
[listen]
address = %q
[tls]
cert = %q
[upstream]
address = "embedded"
[admin]
address = %q
%s
[cluster]
redis = %q
node = %q
key_prefix = %q
%s
`, g.addr, tc.cert, g.admin, limits, url, g.id, tc.prefix, clusterExtra)
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g.logPath = filepath.Join(tc.dir, g.id+".log")
	tc.nodes = append(tc.nodes, g)
	tc.start(g, imapgateBinary(t))
	return g
}

func (tc *testCluster) start(g *gateNode, bin string) {
	t := tc.t
	t.Helper()
	logf, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(bin, "-config", g.cfgPath, "-grace", "0s")
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	g.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	waitFor(t, g.id+" ready", func() bool {
		resp, err := http.Get("http://" + g.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (tc *testCluster) restart(g *gateNode) { tc.start(g, imapgateBinary(tc.t)) }

// kill9 kills a node without letting it clean up.
func (g *gateNode) kill9() {
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Signal(syscall.SIGKILL)
		g.cmd.Wait()
		g.cmd = nil
	}
}

func (tc *testCluster) stop() {
	for _, g := range tc.nodes {
		if g.cmd == nil {
			continue
		}
		g.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { g.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			g.kill9()
		}
	}
	if tc.t.Failed() {
		for _, g := range tc.nodes {
			b, _ := os.ReadFile(g.logPath)
			tc.t.Logf("%s log:\n%s", g.id, lastLines(string(b), 40))
		}
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// metric reads one unlabelled metric of a node's /metrics.
func (g *gateNode) metric(name string) float64 {
	resp, err := http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// gateConn is a client connection: TLS done and greeting read.
type gateConn struct {
	c        *tls.Conn
	r        *bufio.Reader
	greeting string
}

var clusterClientTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}

// connect dials addr from src and reads the greeting; admitted reports an
// "* OK" greeting (a refusal is a failed handshake or "* BYE").
func connect(src, addr string, cfg *tls.Config) (ic *gateConn, admitted bool, err error) {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, false, err
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, false, nil
	}
	ic = &gateConn{c: c, r: bufio.NewReader(c)}
	ic.greeting, err = ic.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, false, nil
	}
	if !strings.HasPrefix(ic.greeting, "* OK") {
		c.Close()
		return nil, false, nil
	}
	return ic, true, nil
}

// cmd sends a command and returns its tagged reply line.
func (ic *gateConn) cmd(tag, command string) (string, error) {
	if _, err := io.WriteString(ic.c, tag+" "+command+"\r\n"); err != nil {
		return "", err
	}
	for {
		l, err := ic.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, tag+" ") {
			return strings.TrimSpace(l), nil
		}
	}
}

// attempt runs n concurrent connection attempts, the i-th from src(i) to
// node i%len(nodes), each doing then(conn) if admitted; it counts those
// for which then reports true (admitted, when then is nil) and keeps them
// open until all attempts are done, then closes them (the others at once).
func (tc *testCluster) attempt(n int, src func(i int) string, then func(ic *gateConn) bool) int {
	var mu sync.Mutex
	var held []*gateConn
	var wg sync.WaitGroup
	ok := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ic, admitted, err := connect(src(i), tc.nodes[i%len(tc.nodes)].addr, clusterClientTLS)
			if err != nil || !admitted {
				return
			}
			if then != nil && !then(ic) {
				ic.c.Close() // e.g. a refused login: leave its pre-login slot
				return
			}
			mu.Lock()
			held = append(held, ic)
			ok++
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, ic := range held {
		ic.c.Close()
	}
	return ok
}

// hold opens n admitted sessions from src, the i-th to nodes[at(i)].
func (tc *testCluster) hold(n int, src string, at func(i int) int) []*gateConn {
	tc.t.Helper()
	var out []*gateConn
	for i := 0; i < n; i++ {
		ic, ok, err := connect(src, tc.nodes[at(i)].addr, clusterClientTLS)
		if err != nil || !ok {
			tc.t.Fatalf("session %d from %s to %s not admitted (%v)", i, src, tc.nodes[at(i)].id, err)
		}
		out = append(out, ic)
	}
	tc.t.Cleanup(func() {
		for _, ic := range out {
			ic.c.Close()
		}
	})
	return out
}

func closeAll(ics []*gateConn) {
	for _, ic := range ics {
		ic.c.Close()
	}
}

// redisClient connects the test to Redis at url.
func redisClient(t *testing.T, url string) rueidis.Client {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// sharedCount is the sum of an address's per-node counts in Redis.
func (tc *testCluster) sharedCount(c rueidis.Client, addr string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m, err := c.Do(ctx, c.B().Hgetall().Key("{"+tc.prefix+"}:c:a:"+addr).Build()).AsIntMap()
	if err != nil {
		return -1
	}
	n := 0
	for _, v := range m {
		n += int(v)
	}
	return n
}

func src(s string) func(int) string { return func(int) string { return s } }

func TestRealRedisMaxPerIPAcrossThreeNodes(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 3, env["REDIS_URL"], "[limits]\nmax_per_ip = 4\n", "")
	if got := tc.attempt(40, src("127.0.13.1"), nil); got != 4 {
		t.Fatalf("40 concurrent attempts from one address over 3 nodes admitted %d, want exactly 4", got)
	}
}

func TestRealRedisMaxConnectionsAcrossThreeNodes(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 3, env["REDIS_URL"], "[limits]\nmax_connections = 4\n", "")
	from := func(i int) string { return fmt.Sprintf("127.0.14.%d", i+1) }
	if got := tc.attempt(40, from, nil); got != 4 {
		t.Fatalf("40 concurrent attempts from 40 addresses over 3 nodes admitted %d, want exactly 4", got)
	}
}

func TestRealRedisMaxPerUserIPAcrossThreeNodes(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 3, env["REDIS_URL"], "[limits]\nmax_per_user_ip = 4\n", "")
	login := func(ic *gateConn) bool {
		r, err := ic.cmd("a", "LOGIN demo demo")
		return err == nil && strings.HasPrefix(r, "a OK")
	}
	if got := tc.attempt(40, src("127.0.15.1"), login); got != 4 {
		t.Fatalf("40 concurrent logins of one user from one address over 3 nodes: %d succeeded, want exactly 4", got)
	}
}

// banLimits bans an address at its third failed login.
const banLimits = `
[limits.auth_failures]
failures = 3
min_users = 1
user_failures = 0
delay = "0s"
[limits.known_good]
min_users = 0
`

// banByFailedLogins fails three logins from src on node at (banLimits
// ban the address) and waits until every node of others refuses src,
// failing the test after a second.
func (tc *testCluster) banByFailedLogins(src string, at *gateNode, others []*gateNode) {
	t := tc.t
	t.Helper()
	for i := 0; i < 3; i++ {
		ic, ok, err := connect(src, at.addr, clusterClientTLS)
		if err != nil || !ok {
			t.Fatalf("login attempt %d not admitted: %v", i, err)
		}
		if r, err := ic.cmd("a", fmt.Sprintf("LOGIN demo wrong%d", i)); err != nil || !strings.HasPrefix(r, "a NO") {
			t.Fatalf("wrong password answered %q, %v", r, err)
		}
		ic.c.Close()
	}
	banned := time.Now()
	for _, g := range others {
		for {
			_, ok, err := connect(src, g.addr, clusterClientTLS)
			if err == nil && !ok {
				break
			}
			if time.Since(banned) > time.Second {
				t.Fatalf("%s still admits the address banned on %s after %s", g.id, at.id, time.Since(banned))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("ban enforced by the other nodes %s after the failed login on %s", time.Since(banned).Round(time.Millisecond), at.id)
}

// A ban made by failed logins on node 1 refuses the address on nodes 2
// and 3 within 1 s.
func TestRealRedisBanOnOneNodeEnforcedByAll(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 3, env["REDIS_URL"], banLimits, "")
	const from = "127.0.16.1"
	tc.banByFailedLogins(from, tc.nodes[0], tc.nodes[1:])
	// Other addresses are not affected; ctl unban (the admin endpoint) on
	// n3 lifts the ban everywhere.
	if _, ok, _ := connect("127.0.16.2", tc.nodes[1].addr, clusterClientTLS); !ok {
		t.Fatal("another address refused")
	}
	resp, err := http.Post("http://"+tc.nodes[2].admin+"/unban?addr="+from, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitFor(t, "the unban on n3 to reach n1", func() bool {
		ic, ok, _ := connect(from, tc.nodes[0].addr, clusterClientTLS)
		if ok {
			ic.c.Close()
		}
		return ok
	})
	// ctl ban on n2 bans on n1 too.
	out, err := tc.nodes[1].ctl(t, "ban", "127.0.16.3", "5m")
	if err != nil {
		t.Fatalf("ctl ban: %v\n%s", err, out)
	}
	if !strings.Contains(out, "banned: ::ffff:127.0.16.3") { // as ctl bans and the log lines write it
		t.Errorf("ctl ban answered %q", out)
	}
	start := time.Now()
	for {
		_, ok, err := connect("127.0.16.3", tc.nodes[0].addr, clusterClientTLS)
		if err == nil && !ok {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatal("ctl ban on n2 not enforced by n1 within 1s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A TLS session from node 1 resumes on node 2: the ticket keys are shared.
func TestRealRedisTLSSessionResumesOnAnotherNode(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 2, env["REDIS_URL"], "", "")
	for _, g := range tc.nodes {
		waitFor(t, g.id+" to install the shared ticket keys", func() bool {
			b, _ := os.ReadFile(g.logPath)
			return strings.Contains(string(b), "TLS session ticket keys shared")
		})
	}
	cfg := clusterClientTLS.Clone()
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	ic, ok, err := connect("127.0.17.1", tc.nodes[0].addr, cfg)
	if err != nil || !ok {
		t.Fatalf("first connection: %v", err)
	}
	// The ticket comes after the handshake; the greeting read took it in.
	if r, err := ic.cmd("a", "NOOP"); err != nil || !strings.HasPrefix(r, "a OK") {
		t.Fatalf("NOOP: %q %v", r, err)
	}
	ic.c.Close()
	ic, ok, err = connect("127.0.17.1", tc.nodes[1].addr, cfg)
	if err != nil || !ok {
		t.Fatalf("second connection: %v", err)
	}
	defer ic.c.Close()
	if !ic.c.ConnectionState().DidResume {
		t.Fatal("the session from n1 did not resume on n2")
	}
}

// kill -9 of a node: its sessions stop counting within node_ttl; and a
// node restarted under the same id clears its stale share before it
// accepts, without waiting for node_ttl.
func TestRealRedisKilledNodeStopsCounting(t *testing.T) {
	env := redistest.Env(t)
	c := redisClient(t, env["REDIS_URL"])
	tc := startCluster(t, 3, env["REDIS_URL"], "[limits]\nmax_per_ip = 4\n", `node_ttl = "2s"`)
	const from = "127.0.18.1"
	tc.hold(4, from, func(i int) int { return []int{2, 2, 0, 1}[i] })
	if _, ok, _ := connect(from, tc.nodes[0].addr, clusterClientTLS); ok {
		t.Fatal("5th session admitted")
	}
	tc.nodes[2].kill9()
	killed := time.Now()
	var extra []*gateConn
	waitFor(t, "n3's two sessions to stop counting", func() bool {
		ic, ok, _ := connect(from, tc.nodes[0].addr, clusterClientTLS)
		if ok {
			extra = append(extra, ic)
		}
		return len(extra) == 2
	})
	took := time.Since(killed)
	t.Logf("n3's sessions stopped counting %s after kill -9 (node_ttl 2s)", took.Round(time.Millisecond))
	if took > 2*time.Second+time.Second {
		t.Errorf("took %s, node_ttl is 2s (plus a heartbeat)", took)
	}
	if _, ok, _ := connect(from, tc.nodes[1].addr, clusterClientTLS); ok {
		t.Fatal("admitted beyond 4 after n3's sessions were dropped")
	}
	closeAll(extra)
	waitFor(t, "the shared count to be 2", func() bool { return tc.sharedCount(c, from) == 2 })
	// ctl status shows the cluster: the nodes, alive or not, their
	// sessions, Redis's latency.
	out, err := tc.nodes[0].ctl(t, "status")
	if err != nil {
		t.Fatalf("ctl status: %v\n%s", err, out)
	}
	t.Logf("ctl status on n1:\n%s", out)
	for _, want := range []string{"cluster      node n1 via redis://imapgate:xxxxx@", "shared limits, Redis", "node n1 ", "node n2 "} {
		if !strings.Contains(out, want) {
			t.Errorf("ctl status lacks %q", want)
		}
	}
}

func TestRealRedisRestartedNodeClearsItsStaleShare(t *testing.T) {
	env := redistest.Env(t)
	c := redisClient(t, env["REDIS_URL"])
	tc := startCluster(t, 2, env["REDIS_URL"], "[limits]\nmax_per_ip = 4\n", `node_ttl = "60s"`)
	const from = "127.0.19.1"
	tc.hold(4, from, func(i int) int { return []int{1, 1, 1, 0}[i] })
	tc.nodes[1].kill9()
	if n := tc.sharedCount(c, from); n != 4 {
		t.Fatalf("shared count %d right after kill -9, want 4 (the dead node's share counts until node_ttl)", n)
	}
	start := time.Now()
	tc.restart(tc.nodes[1])
	if n := tc.sharedCount(c, from); n != 1 {
		t.Fatalf("shared count %d once n2 restarted, want 1: n2 must clear its stale share before it accepts", n)
	}
	t.Logf("n2 restarted and cleared its share in %s (node_ttl 60s)", time.Since(start).Round(time.Millisecond))
	held := tc.hold(3, from, func(i int) int { return i % 2 })
	defer closeAll(held)
	if _, ok, _ := connect(from, tc.nodes[1].addr, clusterClientTLS); ok {
		t.Fatal("5th session admitted")
	}
}

// clusterError reads a node's /status: the cluster's error, if any.
func (g *gateNode) clusterError(t *testing.T) string {
	var st struct {
		Cluster struct {
			Error string `json:"error"`
		} `json:"cluster"`
	}
	g.status(t, &st)
	return st.Cluster.Error
}

// ctl runs imapgate ctl against the node's admin endpoint: its output
// (stdout and stderr) and error.
func (g *gateNode) ctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(imapgateBinary(t), append([]string{"ctl", "-admin", g.admin}, args...)...).CombinedOutput()
	return string(out), err
}

// status decodes a node's /status into v.
func (g *gateNode) status(t *testing.T, v any) {
	t.Helper()
	resp, err := http.Get("http://" + g.admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// clusterNodes reads a node's /status: the cluster's nodes and whether
// each is alive.
func (g *gateNode) clusterNodes(t *testing.T) map[string]bool {
	t.Helper()
	var st struct {
		Cluster struct {
			Nodes []struct {
				Node  string `json:"node"`
				Alive bool   `json:"alive"`
			} `json:"nodes"`
		} `json:"cluster"`
	}
	g.status(t, &st)
	nodes := map[string]bool{}
	for _, n := range st.Cluster.Nodes {
		nodes[n.Node] = n.Alive
	}
	return nodes
}

// SIGTERM takes a node out of Redis: the other node's status no longer
// lists it alive within a second (node_ttl is 60 s), its share no longer
// counts, and restarted at once it finds no other process under its id
// (no duplicate-id warning).
func TestRealRedisStoppedNodeLeaves(t *testing.T) {
	env := redistest.Env(t)
	c := redisClient(t, env["REDIS_URL"])
	tc := startCluster(t, 2, env["REDIS_URL"], "[limits]\nmax_per_ip = 4\n", `node_ttl = "60s"`)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	const from = "127.0.19.2"
	tc.hold(3, from, func(i int) int { return []int{0, 1, 1}[i] })
	if nodes := n1.clusterNodes(t); !nodes["n1"] || !nodes["n2"] {
		t.Fatalf("n1's status before the stop: %v, want n1 and n2 alive", nodes)
	}
	n2.cmd.Process.Signal(syscall.SIGTERM)
	if err := n2.cmd.Wait(); err != nil {
		t.Fatalf("n2 after SIGTERM: %v", err)
	}
	n2.cmd = nil
	stopped := time.Now()
	waitFor(t, "n1's status to list n2 no longer alive", func() bool { return !n1.clusterNodes(t)["n2"] })
	took := time.Since(stopped)
	t.Logf("n2 no longer alive in n1's status %s after it exited (node_ttl 60s); nodes %v", took.Round(time.Millisecond), n1.clusterNodes(t))
	if took > 1500*time.Millisecond {
		t.Errorf("took %s", took)
	}
	if n := tc.sharedCount(c, from); n != 1 {
		t.Errorf("shared count %d after n2 stopped, want 1 (n1's)", n)
	}
	before, _ := os.ReadFile(n2.logPath)
	if !strings.Contains(string(before), "imapgate: cluster: node n2 left Redis") {
		t.Errorf("n2's log lacks that it left Redis:\n%s", lastLines(string(before), 10))
	}
	tc.restart(n2)
	// Its first heartbeat, before it joins, is the one that would find
	// another instance under its id (a warning logged before "joined").
	var l string
	waitFor(t, "the restarted n2 to log that it joined", func() bool {
		after, _ := os.ReadFile(n2.logPath)
		l = string(after[len(before):])
		return strings.Contains(l, "imapgate: cluster: node n2 joined")
	})
	if strings.Contains(l, "another process uses node id") {
		t.Errorf("restarted n2 logged a duplicate id:\n%s", l)
	}
	if nodes := n1.clusterNodes(t); !nodes["n2"] {
		t.Errorf("n1's status after n2's restart: %v, want n2 alive", nodes)
	}
}

// Redis stopped mid-run: no admission waits longer than the deadline,
// local limits apply within 1 s, nothing crashes; Redis back (empty): the
// nodes republish their shares and the counts are the truth again.
func TestRealRedisOutageDegradesAndRecovers(t *testing.T) {
	env := redistest.Env(t)
	run, port := outageRedis(t, env)
	tc := startCluster(t, 2, env["REDIS_OUTAGE_URL"], "[limits]\nmax_per_ip = 4\n", "")
	const from = "127.0.20.1"
	tc.hold(4, from, func(i int) int { return i % 2 })
	if _, ok, _ := connect(from, tc.nodes[0].addr, clusterClientTLS); ok {
		t.Fatal("5th session admitted with Redis up")
	}
	run("stop-port", port)
	stopped := time.Now()
	// n1 has 2 of the address's sessions: under local limits it admits 2
	// more, then refuses; no attempt waits for Redis past the deadline.
	var admitted []*gateConn
	defer func() { closeAll(admitted) }()
	for i := 0; i < 4; i++ {
		start := time.Now()
		ic, ok, err := connect(from, tc.nodes[0].addr, clusterClientTLS)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if took > 300*time.Millisecond {
			t.Errorf("attempt %d with Redis down took %s (deadline 50ms)", i, took)
		}
		if ok {
			admitted = append(admitted, ic)
		}
	}
	if len(admitted) != 2 {
		t.Fatalf("with Redis down, n1 admitted %d more from an address it holds 2 of, want 2 (local max_per_ip 4)", len(admitted))
	}
	for _, g := range tc.nodes {
		for g.metric("imapgate_cluster_degraded") != 1 {
			if time.Since(stopped) > time.Second {
				t.Fatalf("%s not on local limits 1s after Redis stopped", g.id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("both nodes on local limits %s after Redis stopped", time.Since(stopped).Round(time.Millisecond))
	for _, g := range tc.nodes {
		// A degraded node cannot know who is alive: no frozen count.
		if v := g.metric("imapgate_cluster_nodes_alive"); v != -1 {
			t.Errorf("%s exports imapgate_cluster_nodes_alive %v while degraded", g.id, v)
		}
	}
	// ctl status says why once (the failed call and the failed rejoin
	// are the same refusal).
	waitFor(t, "ctl status to give Redis's error", func() bool {
		out, _ := tc.nodes[0].ctl(t, "status")
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "Redis: ") {
				line = l
			}
		}
		if n := strings.Count(line, "connection refused"); n > 1 {
			t.Fatalf("ctl status gives the error %d times: %s", n, line)
		}
		return strings.Contains(line, "connection refused")
	})
	// A ban made meanwhile says it is this node's until Redis answers,
	// and reaches the other node then.
	const bannedMeanwhile = "127.0.20.9"
	out, err := tc.nodes[0].ctl(t, "ban", bannedMeanwhile, "5m")
	if err != nil || !strings.Contains(out, "cluster: degraded: in force on this node now, on the other nodes once Redis answers again") {
		t.Errorf("ctl ban while degraded: %v\n%s", err, out)
	}
	run("start-port", port)
	restarted := time.Now()
	c := redisClient(t, env["REDIS_OUTAGE_URL"])
	waitFor(t, "the shared count to be the truth (6) again", func() bool { return tc.sharedCount(c, from) == 6 })
	t.Logf("counts converged %s after Redis came back empty", time.Since(restarted).Round(time.Millisecond))
	for _, g := range tc.nodes {
		// A node's share is in Redis before it switches back: it stores
		// its bans (one made meanwhile here) and then resumes.
		if !pollUntil(2*time.Second, func() bool { return g.metric("imapgate_cluster_degraded") == 0 }) {
			t.Errorf("%s still degraded 2 s after the counts converged", g.id)
		}
		if v := g.metric("imapgate_cluster_fallbacks_total"); v < 1 {
			t.Errorf("%s fallbacks_total = %v", g.id, v)
		}
		waitFor(t, g.id+"'s nodes_alive to count every node again", func() bool {
			return g.metric("imapgate_cluster_nodes_alive") == float64(len(tc.nodes))
		})
	}
	waitFor(t, "the ban made while degraded to reach n2", func() bool {
		ic, ok, err := connect(bannedMeanwhile, tc.nodes[1].addr, clusterClientTLS)
		if ok {
			ic.c.Close()
		}
		return err == nil && !ok
	})
	if _, ok, _ := connect(from, tc.nodes[1].addr, clusterClientTLS); ok {
		t.Fatal("admitted over the shared limit after recovery (6 held, max 4)")
	}
	for _, g := range tc.nodes {
		if g.cmd.ProcessState != nil {
			t.Errorf("%s exited", g.id)
		}
	}
}

// Sentinel failover (one master, one replica, one sentinel that requires
// its own ACL user, given by sentinel_username and sentinel_password in
// the URL): the nodes follow the new master and the limits hold across
// the switch.
func TestRealRedisSentinelFailover(t *testing.T) {
	env := redistest.Env(t)
	setup := env["REDIS_SETUP"]
	sentinel := redisClient(t, "redis://"+env["REDIS_SENTINEL_USER"]+":"+env["REDIS_SENTINEL_PASSWORD"]+"@127.0.0.1:"+env["REDIS_SENTINEL_PORT"])
	master := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		a, err := sentinel.Do(ctx, sentinel.B().Arbitrary("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "imapgate").Build()).AsStrSlice()
		if err != nil || len(a) != 2 {
			return ""
		}
		return a[1]
	}
	for _, p := range strings.Split(env["REDIS_SENTINEL_PORTS"], ",") {
		exec.Command("bash", setup, "start-port", p).Run()
	}
	// The replica must be in sync before the master goes.
	waitFor(t, "the replica to sync", func() bool {
		out, _ := exec.Command("redis-cli", "-p", env["REDIS_SENTINEL_PORT"], "--user", env["REDIS_SENTINEL_USER"],
			"--pass", env["REDIS_SENTINEL_PASSWORD"], "--no-auth-warning", "sentinel", "replicas", "imapgate").Output()
		return strings.Contains(string(out), "slave") && !strings.Contains(string(out), "s_down")
	})
	tc := startCluster(t, 3, env["REDIS_SENTINEL_URL"], "[limits]\nmax_per_ip = 4\n", "")
	const from = "127.0.21.1"
	tc.hold(4, from, func(i int) int { return i % 3 })
	if got := tc.attempt(12, src(from), nil); got != 0 {
		t.Fatalf("before the failover, %d admitted over the limit", got)
	}
	old := master()
	if old == "" {
		t.Fatal("the sentinel knows no master")
	}
	if out, err := exec.Command("bash", setup, "stop-port", old).CombinedOutput(); err != nil {
		t.Fatalf("stopping the master: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("bash", setup, "start-port", old).Run() })
	killed := time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for master() == old || master() == "" {
		if time.Now().After(deadline) {
			t.Fatal("the sentinel did not fail over within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("master %s stopped; sentinel promoted %s %s later", old, master(), time.Since(killed).Round(time.Millisecond))
	// Settled: every node on the shared limits, and none fell back in
	// the last second (the first calls to a fresh master can be slow).
	settled := func() (float64, bool) {
		sum := 0.0
		for _, g := range tc.nodes {
			if g.metric("imapgate_cluster_degraded") != 0 {
				return 0, false
			}
			sum += g.metric("imapgate_cluster_fallbacks_total")
		}
		return sum, true
	}
	waitFor(t, "all nodes on the shared limits through the new master, for a second", func() bool {
		before, ok := settled()
		if !ok {
			return false
		}
		time.Sleep(time.Second)
		after, ok := settled()
		return ok && after == before
	})
	t.Logf("all nodes on the shared limits %s after the master stopped", time.Since(killed).Round(time.Millisecond))
	if got := tc.attempt(12, src(from), nil); got != 0 {
		t.Fatalf("after the failover, %d admitted over the limit (4 held)", got)
	}
	fallbacks := 0.0
	for _, g := range tc.nodes {
		fallbacks += g.metric("imapgate_cluster_fallbacks_total")
	}
	if fallbacks == 0 {
		t.Error("no node noticed the failover")
	}
	// /status (and ctl status) name the master the node now uses.
	var st struct {
		Cluster struct{ Master string } `json:"cluster"`
	}
	tc.nodes[0].status(t, &st)
	if want := "127.0.0.1:" + master(); st.Cluster.Master != want {
		t.Errorf("/status names the master %q after the failover, want %q", st.Cluster.Master, want)
	}
	// The old master comes back as a replica.
	exec.Command("bash", setup, "start-port", old).Run()
}

// The known-good tier found on one node reaches the others, and a node
// that joins later loads it: an office over the ordinary max_per_ip is
// admitted on every node, not only on the one its users logged in
// through. Without the sharing, n2 and n3 refuse it for good (they check
// the ordinary limit against the shared count and never admit a login to
// learn from).
func TestRealRedisKnownGoodReachesEveryNode(t *testing.T) {
	env := redistest.Env(t)
	const limits = `
[limits]
max_per_ip = 2
[limits.known_good]
min_users = 1
max_per_ip = 20
`
	tc := startCluster(t, 2, env["REDIS_URL"], limits, "")
	const office = "127.0.17.1"
	ic, ok, err := connect(office, tc.nodes[0].addr, clusterClientTLS)
	if err != nil || !ok {
		t.Fatalf("first connection refused: %v", err)
	}
	if r, err := ic.cmd("a", "LOGIN demo demo"); err != nil || !strings.HasPrefix(r, "a OK") {
		t.Fatalf("LOGIN answered %q, %v", r, err)
	}
	// Three more sessions on n1: the office is over the ordinary limit.
	tc.hold(3, office, func(int) int { return 0 })
	start := time.Now()
	waitFor(t, "n2 to admit the office (known-good learned from n1)", func() bool {
		ic, ok, _ := connect(office, tc.nodes[1].addr, clusterClientTLS)
		if ok {
			ic.c.Close()
		}
		return ok
	})
	t.Logf("n2 admitted the office %s after the login on n1", time.Since(start).Round(time.Millisecond))
	// A node that joins now loads the tier before it serves.
	n3 := tc.add(env["REDIS_URL"], limits, "")
	ic3, ok, err := connect(office, n3.addr, clusterClientTLS)
	if err != nil || !ok {
		t.Fatalf("n3, started after the login, refused the office (%v)", err)
	}
	ic3.c.Close()
	// Another address is held to the ordinary limit on every node.
	if got := tc.attempt(6, src("127.0.17.2"), nil); got != 2 {
		t.Fatalf("an ordinary address was admitted %d times, want 2", got)
	}
	ic.c.Close()
}

// A node killed and restarted within node_ttl finds its dead process's
// instance under its id: it joins (after two beats), with no warning. A
// second live process with a node's id does not join: it logs why and
// stays on local limits, and the first keeps its share (joining would
// have cleared it as stale, letting the first's sessions out of the
// shared count); stopped, it leaves the first alone.
func TestRealRedisDuplicateNodeIDDoesNotJoin(t *testing.T) {
	env := redistest.Env(t)
	c := redisClient(t, env["REDIS_URL"])
	tc := startCluster(t, 2, env["REDIS_URL"], "[limits]\nmax_per_ip = 3\n", "")
	n1, n2 := tc.nodes[0], tc.nodes[1]
	const warning = "another process uses node id"
	n1.kill9()
	before, _ := os.ReadFile(n1.logPath)
	tc.restart(n1)
	waitFor(t, "the restarted n1 to join", func() bool {
		after, _ := os.ReadFile(n1.logPath)
		return strings.Contains(string(after[len(before):]), "imapgate: cluster: node n1 joined")
	})
	time.Sleep(1500 * time.Millisecond) // three heartbeats
	after, _ := os.ReadFile(n1.logPath)
	if l := string(after[len(before):]); strings.Contains(l, warning) || strings.Contains(l, "another live process") {
		t.Errorf("n1, killed and restarted, took its dead process for a duplicate:\n%s", l)
	}
	const from = "127.0.19.9"
	tc.hold(3, from, func(int) int { return 0 }) // all on n1
	// A second process with n1's id, on addresses of its own.
	cfg, err := os.ReadFile(n1.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dup := &gateNode{id: "n1-dup", addr: freeAddr(t), admin: freeAddr(t), logPath: filepath.Join(tc.dir, "dup.log"),
		cfgPath: filepath.Join(tc.dir, "dup.toml")}
	text := strings.ReplaceAll(strings.ReplaceAll(string(cfg), n1.addr, dup.addr), n1.admin, dup.admin)
	if err := os.WriteFile(dup.cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	tc.nodes = append(tc.nodes, dup) // stopped with the others
	tc.start(dup, imapgateBinary(t))
	waitFor(t, "the duplicate to say why it does not join", func() bool {
		b, _ := os.ReadFile(dup.logPath)
		return strings.Contains(string(b), `imapgate: cluster: error: another live process uses node id "n1"`)
	})
	if b, _ := os.ReadFile(dup.logPath); strings.Contains(string(b), "node n1 joined") {
		t.Fatalf("the duplicate joined:\n%s", b)
	}
	if v := dup.metric("imapgate_cluster_degraded"); v != 1 {
		t.Errorf("the duplicate's imapgate_cluster_degraded = %v, want 1", v)
	}
	if e := dup.clusterError(t); !strings.Contains(e, "another live process uses node id") {
		t.Errorf("the duplicate's status does not say why it is degraded: %q", e)
	}
	if n := tc.sharedCount(c, from); n != 3 {
		t.Errorf("shared count %d with the duplicate running, want n1's 3", n)
	}
	if ic, ok, err := connect(from, n2.addr, clusterClientTLS); err == nil && ok {
		ic.c.Close()
		t.Error("a 4th session on n2 was admitted while n1 holds 3 (max_per_ip 3)")
	}
	mark, _ := os.ReadFile(n1.logPath)
	dup.cmd.Process.Signal(syscall.SIGTERM)
	dup.cmd.Wait()
	dup.cmd = nil
	time.Sleep(1500 * time.Millisecond) // three of n1's heartbeats
	if b, _ := os.ReadFile(n1.logPath); strings.Contains(string(b[len(mark):]), "Redis failed") {
		t.Errorf("n1 took the duplicate's exit for a Redis failure:\n%s", b[len(mark):])
	}
	if n := tc.sharedCount(c, from); n != 3 {
		t.Errorf("shared count %d after the duplicate stopped, want n1's 3", n)
	}
}

// A node whose start fails on a port in use (the admin address here; the
// IMAP one is bound at the same point) never goes as far as Redis: its log
// says why it did not start and has no cluster line (it used to join, then
// leave at once), and the other node does not list it.
func TestRealRedisFailedStartNeverJoins(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 1, env["REDIS_URL"], "", "")
	n1 := tc.nodes[0]
	cfg, err := os.ReadFile(n1.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// n2: addresses of its own, but n1's admin address, which is taken.
	n2addr := freeAddr(t)
	text := strings.ReplaceAll(strings.ReplaceAll(string(cfg), n1.addr, n2addr), `node = "n1"`, `node = "n2"`)
	path, logPath := filepath.Join(tc.dir, "n2.toml"), filepath.Join(tc.dir, "n2.log")
	if err := os.WriteFile(path, []byte(text+"[log]\noutput = \"file:"+logPath+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(imapgateBinary(t), "-config", path, "-grace", "0s").CombinedOutput()
	if err == nil {
		t.Fatalf("n2 started with its admin address taken:\n%s", out)
	}
	if nodes := n1.clusterNodes(t); len(nodes) != 1 || !nodes["n1"] {
		t.Errorf("n1's status lists %v after n2's failed start, want n1 alone", nodes)
	}
	b, _ := os.ReadFile(logPath)
	if !strings.Contains(string(b), "imapgate: not started: admin.address: listen tcp "+n1.admin) {
		t.Errorf("n2's log does not say why it did not start:\n%s\n(stderr: %s)", b, out)
	}
	if strings.Contains(string(b), "imapgate: cluster:") {
		t.Errorf("n2's log has cluster lines: it went as far as Redis:\n%s", b)
	}
}

// Nodes whose [limits] differ are named in the log and in ctl status
// (each checks the shared counts against its own limits), and a reload
// that makes them agree says so.
func TestRealRedisDifferentLimitsAreReported(t *testing.T) {
	env := redistest.Env(t)
	tc := startCluster(t, 1, env["REDIS_URL"], "[limits]\nmax_per_ip = 2\n", "")
	n2 := tc.add(env["REDIS_URL"], "[limits]\nmax_per_ip = 5\n", "")
	const want = "imapgate: cluster: warning: other nodes apply other limits to the shared counts (node n1: max_per_ip=2 (here 5))"
	waitFor(t, "n2 to log that n1's limits differ", func() bool {
		b, _ := os.ReadFile(n2.logPath)
		return strings.Contains(string(b), want)
	})
	out, err := n2.ctl(t, "status")
	if err != nil || !strings.Contains(out, "limits differ: node n1: max_per_ip=2 (here 5)") {
		t.Fatalf("ctl status on n2: %v\n%s", err, out)
	}
	cfg, _ := os.ReadFile(n2.cfgPath)
	os.WriteFile(n2.cfgPath, []byte(strings.Replace(string(cfg), "max_per_ip = 5", "max_per_ip = 2", 1)), 0o600)
	if out, err := n2.ctl(t, "reload"); err != nil {
		t.Fatalf("ctl reload: %v\n%s", err, out)
	}
	waitFor(t, "n2 to log that the limits agree again", func() bool {
		b, _ := os.ReadFile(n2.logPath)
		return strings.Contains(string(b), "imapgate: cluster: every node's limits agree again")
	})
	if out, _ := n2.ctl(t, "status"); strings.Contains(out, "limits differ") {
		t.Errorf("ctl status still says the limits differ:\n%s", out)
	}
}

// An unban made on one node while Redis is away holds once Redis is
// back: the other node, which still holds the ban, does not store it
// again when it republishes (Redis here comes back empty, as after a
// restart without persistence, so every node republishes its bans).
func TestRealRedisUnbanDuringOutageHolds(t *testing.T) {
	env := redistest.Env(t)
	run, port := outageRedis(t, env)
	tc := startCluster(t, 2, env["REDIS_OUTAGE_URL"], "", "")
	const banned = "127.0.25.9"
	ctl := func(g *gateNode, args ...string) string {
		out, err := g.ctl(t, args...)
		if err != nil {
			t.Fatalf("ctl %v on %s: %v\n%s", args, g.id, err, out)
		}
		return out
	}
	refused := func(g *gateNode) bool {
		ic, ok, err := connect(banned, g.addr, clusterClientTLS)
		if ok {
			ic.c.Close()
		}
		return err == nil && !ok
	}
	ctl(tc.nodes[0], "ban", banned, "10m")
	waitFor(t, "n2 to enforce n1's ban", func() bool { return refused(tc.nodes[1]) })
	run("stop-port", port)
	for _, g := range tc.nodes {
		waitFor(t, g.id+" to degrade", func() bool { return g.metric("imapgate_cluster_degraded") == 1 })
	}
	if out := ctl(tc.nodes[1], "unban", banned); !strings.Contains(out, "lifted: true") {
		t.Fatalf("ctl unban on n2 while degraded: %s", out)
	}
	run("start-port", port)
	for _, g := range tc.nodes {
		waitFor(t, g.id+" to recover", func() bool { return g.metric("imapgate_cluster_degraded") == 0 })
	}
	// Both have republished; give the ban sync (every 500 ms) a few rounds.
	time.Sleep(2 * time.Second)
	for _, g := range tc.nodes {
		if refused(g) {
			t.Errorf("%s refuses %s after Redis came back: the unban made on n2 while degraded was undone", g.id, banned)
		}
		if out := ctl(g, "bans"); strings.Contains(out, banned) {
			t.Errorf("ctl bans on %s lists %s:\n%s", g.id, banned, out)
		}
	}
}

// outageRedis starts the Redis that outage tests stop (and starts it
// again when the test ends), and returns setup.sh's runner and its port.
func outageRedis(t *testing.T, env map[string]string) (run func(args ...string), port string) {
	t.Helper()
	setup, port := env["REDIS_SETUP"], env["REDIS_OUTAGE_PORT"]
	run = func(args ...string) {
		if out, err := exec.Command("bash", append([]string{setup}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("setup.sh %v: %v\n%s", args, err, out)
		}
	}
	run("start-port", port)
	t.Cleanup(func() { run("start-port", port) })
	return run, port
}
