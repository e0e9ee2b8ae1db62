package cluster

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"imapgate/limiter"
)

func redisURL(t *testing.T) string {
	t.Helper()
	path := os.Getenv("IMAPGATE_REDIS")
	if path == "" {
		path = "/tmp/imapgate-redis/env"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		msg := fmt.Sprintf("real Redis not set up (%v): run sudo integration/redis/setup.sh install && sudo integration/redis/setup.sh start", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "REDIS_URL="); ok {
			return v
		}
	}
	t.Fatal("no REDIS_URL in " + path)
	return ""
}

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
