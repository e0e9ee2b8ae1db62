package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"imapgate/certs"
	"imapgate/internal/redistest"
	"imapgate/limiter"
)

func redisURL(t *testing.T) string { return redistest.Get(t, "REDIS_URL") }

// Two nodes share the ticket keys; rotations (one node at a time, by the
// lease) move prev <- cur <- next <- new, and both nodes install each
// new triple, so a key is accepted everywhere before anyone encrypts
// with it.
func TestRealRedisTicketKeysRotateUnderLease(t *testing.T) {
	url := redisURL(t)
	prefix := fmt.Sprintf("imapgate-tk%d", time.Now().UnixNano())
	var nodes []*Cluster
	for _, id := range []string{"k1", "k2"} {
		c, err := New(Options{URL: url, Node: id, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		c.ShareTicketKeys(&tls.Config{}, 400*time.Millisecond) // checked every 100 ms
		l, _ := limiter.New(defaultPolicy(), limiter.Options{RateEntries: 1024})
		c.Start(l)
		t.Cleanup(c.Close)
		nodes = append(nodes, c)
	}
	seen := map[[3]string]bool{}
	var order [][3]string
	deadline := time.Now().Add(10 * time.Second)
	for len(order) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("saw %d key triples in 10s, want 3", len(order))
		}
		cl, _ := nodes[0].conn()
		vals, err := cl.Do(t.Context(), cl.B().Hmget().Key(nodes[0].k.tickets).Field("cur", "prev", "next").Build()).AsStrSlice()
		if err == nil && len(vals) == 3 && vals[0] != "" {
			tr := [3]string{vals[0], vals[1], vals[2]}
			if !seen[tr] {
				seen[tr] = true
				order = append(order, tr)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 1; i < len(order); i++ {
		prev, cur := order[i-1], order[i]
		if cur[1] != prev[0] || cur[0] != prev[2] {
			t.Fatalf("rotation %d: cur/prev/next did not move prev <- cur <- next", i)
		}
	}
	// Both nodes install the stored keys (they check every 100 ms).
	waitUntil := time.Now().Add(2 * time.Second)
	for {
		cl, _ := nodes[0].conn()
		cur, _ := cl.Do(t.Context(), cl.B().Hget().Key(nodes[0].k.tickets).Field("cur").Build()).ToString()
		if nodes[0].tickets.installed(cur) && nodes[1].tickets.installed(cur) {
			break
		}
		if time.Now().After(waitUntil) {
			t.Fatal("a node did not install the current key")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsNode is a cluster node with a TLS server on loopback whose session
// ticket keys are the cluster's: it completes a handshake, writes one
// byte (so the client reads the session ticket) and closes.
type tlsNode struct {
	c    *Cluster
	addr string
}

func startTLSNode(t *testing.T, url, prefix, id string, rotation time.Duration) *tlsNode {
	t.Helper()
	cert, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{*cert}}
	c, err := New(Options{URL: url, Node: id, KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	c.ShareTicketKeys(cfg, rotation)
	l, _ := limiter.New(defaultPolicy(), limiter.Options{RateEntries: 1024})
	c.Start(l)
	t.Cleanup(c.Close)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := fakeServer(t, ln, func(conn net.Conn) {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conn.Write([]byte{'.'})
		io.Copy(io.Discard, conn) // until the client closes
	})
	return &tlsNode{c: c, addr: addr}
}

// handshake connects with cfg (its session cache) and reports whether the
// session was resumed and how long the handshake and first byte took.
func (n *tlsNode) handshake(t *testing.T, cfg *tls.Config) (resumed bool, took time.Duration) {
	t.Helper()
	start := time.Now()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.addr, cfg)
	if err != nil {
		t.Fatalf("handshake with %s: %v", n.c.Node(), err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil { // takes in the ticket
		t.Fatalf("read from %s: %v", n.c.Node(), err)
	}
	return conn.ConnectionState().DidResume, time.Since(start)
}

func clientCache() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", MinVersion: tls.VersionTLS13,
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
}

// storedKeys reads the keys Redis has: cur, prev, next ("" where none,
// all "" if unreachable).
func storedKeys(c *Cluster) (k [3]string) {
	cl, err := c.conn()
	if err != nil {
		return k
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	vals, err := cl.Do(ctx, cl.B().Hmget().Key(c.k.tickets).Field("cur", "prev", "next").Build()).ToArray()
	if err != nil || len(vals) != 3 {
		return k
	}
	for i, v := range vals {
		k[i], _ = v.ToString()
	}
	return k
}

// holds reports whether the node has installed exactly these keys.
func (n *tlsNode) holds(k [3]string) bool {
	n.c.tickets.mu.Lock()
	defer n.c.tickets.mu.Unlock()
	return k[0] != "" && n.c.tickets.have == k
}

// Redis stopped across a rotation period: both nodes keep the keys they
// have, handshakes and cross-node resumption go on without a stall; when
// Redis comes back (empty), one node stores the keys it holds under the
// lease, rotates them, both install the result, and a ticket issued during
// the outage still resumes on the other node.
func TestRealRedisTicketKeysAcrossOutage(t *testing.T) {
	url, port, setup := redistest.Get(t, "REDIS_TICKETS_URL"), redistest.Get(t, "REDIS_TICKETS_PORT"), redistest.Get(t, "REDIS_SETUP")
	run := func(args ...string) {
		if out, err := exec.Command("bash", append([]string{setup}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("setup.sh %v: %v\n%s", args, err, out)
		}
	}
	run("start-port", port)
	t.Cleanup(func() { run("start-port", port) })
	const rotation = 3 * time.Second // checked every 750 ms
	prefix := fmt.Sprintf("imapgate-tko%d", time.Now().UnixNano())
	n1, n2 := startTLSNode(t, url, prefix, "o1", rotation), startTLSNode(t, url, prefix, "o2", rotation)
	waitTrue(t, 5*time.Second, "both nodes to install the stored keys", func() bool {
		k := storedKeys(n1.c)
		return n1.holds(k) && n2.holds(k)
	})
	cfg := clientCache()
	n1.handshake(t, cfg)
	if resumed, _ := n2.handshake(t, cfg); !resumed {
		t.Fatal("Redis up: a session from o1 did not resume on o2")
	}

	run("stop-port", port)
	stopped := time.Now()
	waitTrue(t, 5*time.Second, "both nodes to notice Redis is gone", func() bool { return n1.c.Degraded() && n2.c.Degraded() })
	// Across more than a rotation period: every handshake is quick (the
	// keys are the node's own, no call to Redis), and sessions resume
	// across nodes with the keys both have.
	outage := clientCache()
	for time.Since(stopped) < rotation+time.Second {
		for _, pair := range [][2]*tlsNode{{n1, n2}, {n2, n1}} {
			c := clientCache()
			if _, took := pair[0].handshake(t, c); took > time.Second {
				t.Errorf("Redis down: a full handshake with %s took %s", pair[0].c.Node(), took)
			}
			resumed, took := pair[1].handshake(t, c)
			if !resumed {
				t.Fatalf("Redis down for %s: a session from %s did not resume on %s", time.Since(stopped).Round(time.Millisecond), pair[0].c.Node(), pair[1].c.Node())
			}
			if took > time.Second {
				t.Errorf("Redis down: a resumption on %s took %s", pair[1].c.Node(), took)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	n1.handshake(t, outage) // a ticket from the outage, tried again below
	var held [3]string
	n1.c.tickets.mu.Lock()
	held = n1.c.tickets.have
	n1.c.tickets.mu.Unlock()

	run("start-port", port) // empty: no persistence
	restarted := time.Now()
	// One node stores the keys it holds and rotates them (due at once):
	// Redis has prev, cur, next = held cur, held next, a new key, and
	// both nodes, back on the shared state, install exactly that.
	waitTrue(t, 10*time.Second, "a rotation of the held keys, installed on both nodes", func() bool {
		k := storedKeys(n1.c)
		return k[0] == held[2] && k[1] == held[0] && n1.holds(k) && n2.holds(k) && !n1.c.Degraded() && !n2.c.Degraded()
	})
	t.Logf("keys rotated and installed on both nodes %s after Redis came back", time.Since(restarted).Round(time.Millisecond))
	if resumed, _ := n2.handshake(t, outage); !resumed {
		t.Fatal("a ticket o1 issued during the outage did not resume on o2 after Redis came back")
	}
	after := clientCache()
	n2.handshake(t, after)
	if resumed, _ := n1.handshake(t, after); !resumed {
		t.Fatal("after Redis came back: a session from o2 did not resume on o1")
	}
}

// waitTrue polls cond every 20 ms until it holds, or fails after limit.
func waitTrue(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
