package integration

// Redis Cluster and Sentinel with AUTH (integration/redis/setup.sh start
// runs both): the URL forms of the README, through real servers.

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"imapgate/cluster"
	"imapgate/internal/redistest"
)

// slotElsewhere returns a key prefix whose hash tag's slot is not served by
// the first node of the cluster URL, so a client that did not switch to
// cluster mode would get MOVED for every call.
func slotElsewhere(t *testing.T, clusterURL string) string {
	t.Helper()
	u, err := url.Parse(clusterURL)
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	for i := 0; i < 50; i++ {
		prefix := fmt.Sprintf("imapgate-c%d-%d", time.Now().UnixNano(), i)
		out, _ := exec.Command("redis-cli", "-h", u.Hostname(), "-p", u.Port(), "--user", u.User.Username(), "--pass", pass,
			"--no-auth-warning", "EXISTS", "{"+prefix+"}:nodes").CombinedOutput()
		if strings.Contains(string(out), "MOVED") {
			return prefix
		}
	}
	t.Fatal("no prefix found whose slot is on another node than the URL's first")
	return ""
}

// settledShared fails the test unless every node is on the shared limits
// and none ever fell back.
func (tc *testCluster) settledShared() {
	tc.t.Helper()
	for _, g := range tc.nodes {
		if d, f := g.metric("imapgate_cluster_degraded"), g.metric("imapgate_cluster_fallbacks_total"); d != 0 || f != 0 {
			tc.t.Fatalf("%s: degraded %v, fallbacks %v: not on the shared limits throughout", g.id, d, f)
		}
	}
}

// Redis Cluster (three masters): the URL names one node and the others
// by addr; the keys' slot is on another node than the first, so only a
// client in cluster mode reaches it. max_per_ip = 4 holds exactly over
// three imapgate nodes.
func TestRealRedisClusterModeSharesLimits(t *testing.T) {
	env := redistest.Env(t)
	curl := env["REDIS_CLUSTER_URL"]
	if curl == "" {
		t.Fatal("no REDIS_CLUSTER_URL: run integration/redis/setup.sh start again")
	}
	tc := startClusterPrefix(t, 3, curl, slotElsewhere(t, curl), "[limits]\nmax_per_ip = 4\n", "")
	if got := tc.attempt(40, src("127.0.22.1"), nil); got != 4 {
		t.Fatalf("40 concurrent attempts from one address over 3 nodes (Redis Cluster) admitted %d, want exactly 4", got)
	}
	held := tc.hold(3, "127.0.22.2", func(i int) int { return i % 3 })
	defer closeAll(held)
	c := redisClient(t, curl) // rueidis in cluster mode, as imapgate
	if n := tc.sharedCount(c, "127.0.22.2"); n != 3 {
		t.Fatalf("shared count in the Redis Cluster %d, want 3", n)
	}
	tc.settledShared()
	// The URL with one node only: rueidis learns the others from it.
	one, _, _ := strings.Cut(curl, "?")
	n4 := tc.add(one, "[limits]\nmax_per_ip = 4\n", "")
	ic, ok, _ := connect("127.0.22.2", n4.addr, clusterClientTLS)
	if !ok {
		t.Fatal("the 4th session (3 held) refused by a node given one cluster address")
	}
	defer ic.c.Close()
	if _, ok, _ := connect("127.0.22.2", tc.nodes[0].addr, clusterClientTLS); ok {
		t.Fatal("a 5th session admitted")
	}
	tc.settledShared()
}

// A node through the unix socket and one through TCP, to the same Redis:
// max_per_ip = 4 holds exactly over both (unix:// for replicas on
// Redis's own host).
func TestRealRedisUnixSocketSharesLimits(t *testing.T) {
	env := redistest.Env(t)
	unixURL := redistest.Get(t, "REDIS_UNIX_URL")
	const limits = "[limits]\nmax_per_ip = 4\n"
	tc := startCluster(t, 1, env["REDIS_URL"], limits, "")
	tc.add(unixURL, limits, "")
	if got := tc.attempt(40, src("127.0.25.1"), nil); got != 4 {
		t.Fatalf("40 concurrent attempts from one address over a TCP node and a unix-socket node admitted %d, want exactly 4", got)
	}
	held := tc.hold(4, "127.0.25.2", func(i int) int { return i % 2 })
	defer closeAll(held)
	for _, g := range tc.nodes {
		if _, ok, _ := connect("127.0.25.2", g.addr, clusterClientTLS); ok {
			t.Fatalf("a 5th session admitted by %s", g.id)
		}
	}
	if n := tc.sharedCount(redisClient(t, unixURL), "127.0.25.2"); n != 4 {
		t.Fatalf("shared count read through the socket %d, want 4", n)
	}
	out, err := tc.nodes[1].ctl(t, "status")
	if err != nil || !strings.Contains(out, "via unix://imapgate:xxxxx@"+env["REDIS_DIR"]+"/") {
		t.Fatalf("ctl status of the unix-socket node: %v\n%s", err, out)
	}
	tc.settledShared()
}

// Redis Cluster: a ban from failed logins on node 1 (stored and published
// through the cluster) refuses the address on nodes 2 and 3 within 1 s.
func TestRealRedisClusterModeBanPropagates(t *testing.T) {
	env := redistest.Env(t)
	curl := env["REDIS_CLUSTER_URL"]
	if curl == "" {
		t.Fatal("no REDIS_CLUSTER_URL: run integration/redis/setup.sh start again")
	}
	tc := startClusterPrefix(t, 3, curl, slotElsewhere(t, curl), banLimits, "")
	tc.banByFailedLogins("127.0.23.1", tc.nodes[0], tc.nodes[1:])
	if _, ok, _ := connect("127.0.23.2", tc.nodes[2].addr, clusterClientTLS); !ok {
		t.Fatal("another address refused")
	}
	// The ban is stored too: a node started afterwards refuses the address.
	late := tc.add(curl, banLimits, "")
	if _, ok, _ := connect("127.0.23.1", late.addr, clusterClientTLS); ok {
		t.Fatal("a node started after the ban admits the banned address")
	}
	tc.settledShared()
}

// Sentinel that requires AUTH: with sentinel_username and
// sentinel_password in the URL the nodes reach the master and share
// exact limits; without them the sentinel refuses them and the node runs
// on local limits, and says so.
func TestRealRedisSentinelWithAuth(t *testing.T) {
	env := redistest.Env(t)
	surl := env["REDIS_SENTINEL_URL"]
	if !strings.Contains(surl, "sentinel_password=") {
		t.Fatal("REDIS_SENTINEL_URL lacks the sentinel's credentials: run integration/redis/setup.sh start again")
	}
	for _, p := range strings.Split(env["REDIS_SENTINEL_PORTS"], ",") {
		exec.Command("bash", env["REDIS_SETUP"], "start-port", p).Run()
	}
	tc := startCluster(t, 2, surl, "[limits]\nmax_per_ip = 4\n", "")
	if got := tc.attempt(12, src("127.0.24.1"), nil); got != 4 {
		t.Fatalf("12 concurrent attempts over 2 nodes through an authenticated sentinel admitted %d, want exactly 4", got)
	}
	tc.settledShared()

	u, _ := url.Parse(surl)
	q := u.Query()
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	u.RawQuery = q.Encode()
	bad := startCluster(t, 1, u.String(), "[limits]\nmax_per_ip = 4\n", "")
	g := bad.nodes[0]
	if v := g.metric("imapgate_cluster_degraded"); v != 1 {
		t.Fatalf("without the sentinel's credentials: degraded = %v, want 1", v)
	}
	var b []byte
	waitFor(t, "the log to say Redis could not be used", func() bool {
		b, _ = os.ReadFile(g.logPath)
		return strings.Contains(string(b), "could not be used at start")
	})
	if strings.Contains(string(b), env["REDIS_SENTINEL_PASSWORD"]) {
		t.Fatal("the log shows the sentinel's password")
	}
	t.Logf("without the sentinel's credentials: %s", strings.TrimSpace(lastLines(string(b), 3)))
}

// clusterAdmin runs redis-cli on one node of the Redis Cluster as
// setup.sh's user "setup" (CLUSTER FAILOVER and INFO are beyond
// imapgate's user).
func clusterAdmin(t *testing.T, addr string, args ...string) string {
	t.Helper()
	admin, err := url.Parse(redistest.Get(t, "REDIS_ADMIN_URL"))
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := admin.User.Password()
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port, "--user", admin.User.Username(),
		"--pass", pass, "--no-auth-warning"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli -p %s %v: %v\n%s", port, args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// slotServers reads CLUSTER NODES on addr: the master serving slot and
// its replica (host:port each; "" if none).
func slotServers(t *testing.T, addr string, slot int) (master, replica string) {
	t.Helper()
	nodes := cluster.ParseClusterNodes(clusterAdmin(t, addr, "CLUSTER", "NODES"))
	var masterID string
	for _, n := range nodes {
		if n.Has("master") && !failing(n) && n.Serves(slot) {
			masterID, master = n.ID, n.Addr
		}
	}
	for _, n := range nodes {
		if n.Master == masterID && n.Has("slave") && !failing(n) {
			replica = n.Addr
		}
	}
	return master, replica
}

// failing: failed, or suspected of it by the node asked (PFAIL).
func failing(n cluster.ClusterNode) bool { return n.Has("fail") || n.Has("fail?") }

// failOver runs CLUSTER FAILOVER (the manual, graceful kind: the master
// stops writes, the replica catches up, then takes over) on replica and
// waits until every node of the cluster sees it serve slot.
func failOver(t *testing.T, replica string, slot int, nodes []string) time.Duration {
	t.Helper()
	waitFor(t, replica+" to be in sync with its master", func() bool {
		return strings.Contains(clusterAdmin(t, replica, "INFO", "replication"), "master_link_status:up")
	})
	start := time.Now()
	if out := clusterAdmin(t, replica, "CLUSTER", "FAILOVER"); out != "OK" {
		t.Fatalf("CLUSTER FAILOVER on %s: %s", replica, out)
	}
	waitFor(t, "every node to see "+replica+" serve the slot", func() bool {
		for _, n := range nodes {
			if m, _ := slotServers(t, n, slot); m != replica {
				return false
			}
		}
		return true
	})
	return time.Since(start)
}

// Redis Cluster, three masters with one replica each: the master serving
// the keys' slot hands it to its replica (CLUSTER FAILOVER) while three
// imapgate nodes hold 4 sessions of one address and attempts from it go
// on, none of which may get in unless a node degraded (the old master
// holds writes while it hands over; a call past the deadline degrades
// its node, as any late call does). Afterwards every node is back on
// the shared limits within seconds, none exited, and the limits are
// exact (4 of 40; the 4 sessions held still count). Then the slot goes
// back to the first master, and the same holds.
func TestRealRedisClusterModeFailover(t *testing.T) {
	env := redistest.Env(t)
	curl := env["REDIS_CLUSTER_URL"]
	var all []string
	for _, p := range strings.Split(env["REDIS_CLUSTER_PORTS"]+","+redistest.Get(t, "REDIS_CLUSTER_REPLICA_PORTS"), ",") {
		all = append(all, "127.0.0.1:"+p)
	}
	prefix := slotElsewhere(t, curl)
	slot, err := strconv.Atoi(clusterAdmin(t, all[0], "CLUSTER", "KEYSLOT", "{"+prefix+"}:nodes"))
	if err != nil {
		t.Fatal(err)
	}
	master, replica := slotServers(t, all[0], slot)
	if replica == "" {
		t.Fatalf("slot %d's master %s has no replica: run integration/redis/setup.sh start again (three masters with one replica each)", slot, master)
	}
	t.Cleanup(func() { // the layout as before, even if the test failed half way
		if m, _ := slotServers(t, master, slot); m != master {
			failOver(t, master, slot, all)
		}
	})
	tc := startClusterPrefix(t, 3, curl, prefix, "[limits]\nmax_per_ip = 4\n", "")
	if got := tc.attempt(40, src("127.0.26.1"), nil); got != 4 {
		t.Fatalf("before the failover, 40 concurrent attempts from one address admitted %d, want exactly 4", got)
	}
	const from = "127.0.26.2"
	held := tc.hold(4, from, func(i int) int { return i % 3 })
	defer closeAll(held)
	check := func(when, fresh string) {
		t.Helper()
		for try := 1; ; try++ {
			tc.waitShared()
			f0 := tc.fallbacks()
			over, fresh4 := tc.attempt(12, src(from), nil), tc.attempt(40, src(fresh), nil)
			if over == 0 && fresh4 == 4 {
				break
			}
			// A node that fell back meanwhile (Redis past its deadline
			// right after a failover, on a loaded machine) admits by its
			// local limits, as it should: that is no verdict on the
			// shared counts, so check again.
			if f := tc.fallbacks() - f0; f > 0 && try < 3 {
				t.Logf("%s: %v fallbacks during the check (%d and %d admitted under local limits); checking again", when, f, over, fresh4)
				continue
			}
			if over != 0 {
				t.Fatalf("%s: %d admitted from an address holding 4 (max_per_ip 4)", when, over)
			}
			t.Fatalf("%s: 40 concurrent attempts from one address admitted %d, want exactly 4", when, fresh4)
		}
		if n := tc.sharedCount(redisClient(t, curl), from); n != 4 {
			t.Fatalf("%s: shared count %d, want 4", when, n)
		}
		for _, g := range tc.nodes {
			if g.cmd.ProcessState != nil {
				t.Fatalf("%s: %s exited", when, g.id)
			}
		}
	}
	// switch moves the slot to to, while attempts from the address
	// holding 4 go on: none may be admitted unless a node degraded.
	switchTo := func(to string) {
		t.Helper()
		f0 := tc.fallbacks()
		stop := make(chan struct{})
		done := make(chan [2]int)
		go func() {
			var n [2]int // attempts, admitted
			for {
				select {
				case <-stop:
					done <- n
					return
				default:
				}
				n[0], n[1] = n[0]+3, n[1]+tc.attempt(3, src(from), nil)
			}
		}()
		took := failOver(t, to, slot, all)
		time.Sleep(200 * time.Millisecond) // and the calls right after
		close(stop)
		n := <-done
		over, f := n[1], tc.fallbacks()-f0
		t.Logf("slot %d now on %s, %s after CLUSTER FAILOVER; %v fallbacks; %d of %d attempts meanwhile admitted over the limit",
			slot, to, took.Round(time.Millisecond), f, over, n[0])
		if f == 0 && over > 0 {
			t.Fatalf("%d admitted over the limit during the switch, with no node degraded", over)
		}
	}
	switchTo(replica)
	check("after the failover", "127.0.26.3")
	switchTo(master)
	check("after the failback", "127.0.26.4")
}

// fallbacks is the sum of the nodes' imapgate_cluster_fallbacks_total.
func (tc *testCluster) fallbacks() float64 {
	sum := 0.0
	for _, g := range tc.nodes {
		sum += g.metric("imapgate_cluster_fallbacks_total")
	}
	return sum
}

// waitShared waits until every node is on the shared limits and none
// fell back for a second.
func (tc *testCluster) waitShared() {
	tc.t.Helper()
	waitFor(tc.t, "all nodes on the shared limits, for a second", func() bool {
		for _, g := range tc.nodes {
			if g.metric("imapgate_cluster_degraded") != 0 {
				return false
			}
		}
		before := tc.fallbacks()
		time.Sleep(time.Second)
		return tc.fallbacks() == before
	})
}
