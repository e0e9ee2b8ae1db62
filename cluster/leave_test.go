package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// A closing node leaves Redis (leaveScript): gone at once with a small
// share; with more than 500 keys, its liveness expires now and another
// node's sweep takes the rest; and nothing changes if another process
// took its id.
func TestRealRedisLeave(t *testing.T) {
	url := redisURL(t)
	prefix := fmt.Sprintf("imapgate-lv%d", time.Now().UnixNano())
	ctx := context.Background()
	node := func(id string, logs *[]string) (*Cluster, rueidis.Client) {
		c, err := New(Options{URL: url, Node: id, KeyPrefix: prefix, NodeTTL: time.Minute,
			Log: func(m string) { *logs = append(*logs, m) }})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := c.client()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		if _, err := c.heartbeat(ctx, cl); err != nil {
			t.Fatal(err)
		}
		return c, cl
	}
	// share gives node id a field in n count hashes, listed in its key set.
	share := func(c *Cluster, cl rueidis.Client, n int) {
		var cmds rueidis.Commands
		for i := 0; i < n; i++ {
			k := fmt.Sprintf("%sc:a:192.0.2.%d-%d", c.k.p, i%250, i)
			cmds = append(cmds, cl.B().Hset().Key(k).FieldValue().FieldValue(c.o.Node, "1").Build(),
				cl.B().Sadd().Key(c.k.nodeSet(c.o.Node)).Member(k).Build())
		}
		for _, r := range cl.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	state := func(c *Cluster, cl rueidis.Client) (alive bool, listed bool, inst string, keys int64) {
		res := cl.DoMulti(ctx, cl.B().Zscore().Key(c.k.nodes).Member(c.o.Node).Build(),
			cl.B().Hget().Key(c.k.inst).Field(c.o.Node).Build(), cl.B().Scard().Key(c.k.nodeSet(c.o.Node)).Build(),
			cl.B().Time().Build())
		score, err := res[0].AsFloat64()
		listed = err == nil
		inst, _ = res[1].ToString()
		keys, _ = res[2].AsInt64()
		tm, _ := res[3].AsIntSlice()
		return listed && int64(score) >= tm[0]*1000+tm[1]/1000, listed, inst, keys
	}
	var logs1, logs2, logs3 []string
	n1, cl := node("n1", &logs1)
	n2, _ := node("n2", &logs2)
	n3, _ := node("n3", &logs3)
	share(n1, cl, 600)
	share(n3, cl, 2)

	// Another process took n1's id: nothing changes.
	cl.Do(ctx, cl.B().Hset().Key(n1.k.inst).FieldValue().FieldValue("n1", "another").Build())
	n1.leave(cl)
	if alive, _, inst, keys := state(n1, cl); !alive || inst != "another" || keys != 600 {
		t.Fatalf("after leave under another's id: alive %v, instance %q, %d keys; want unchanged", alive, inst, keys)
	}
	if !slices.ContainsFunc(logs1, func(l string) bool { return strings.Contains(l, "another process uses its id") }) {
		t.Errorf("log %q", logs1)
	}

	// n1's own: 500 keys go, the liveness expires now, the rest is n2's
	// sweep to do.
	cl.Do(ctx, cl.B().Hset().Key(n1.k.inst).FieldValue().FieldValue("n1", n1.inst).Build())
	n1.leave(cl)
	if alive, listed, inst, keys := state(n1, cl); alive || !listed || inst != "" || keys != 100 {
		t.Fatalf("after leave: alive %v, listed %v, instance %q, %d keys; want dead, listed, no instance, 100 keys", alive, listed, inst, keys)
	}
	dead, err := n2.heartbeat(ctx, cl)
	if err != nil || !slices.Equal(dead, []string{"n1"}) {
		t.Fatalf("n2's heartbeat: dead %v (%v), want [n1]", dead, err)
	}
	if err := n2.sweep(ctx, cl, "n1", false); err != nil {
		t.Fatal(err)
	}
	if _, listed, _, keys := state(n1, cl); listed || keys != 0 {
		t.Fatalf("after n2's sweep: listed %v, %d keys; want gone", listed, keys)
	}

	// A small share: gone in the one call, fields and all.
	n3.leave(cl)
	if _, listed, inst, keys := state(n3, cl); listed || inst != "" || keys != 0 {
		t.Fatalf("n3 after leave: listed %v, instance %q, %d keys; want gone", listed, inst, keys)
	}
	if v, err := cl.Do(ctx, cl.B().Hget().Key(n3.k.p+"c:a:192.0.2.1-1").Field("n3").Build()).ToString(); !rueidis.IsRedisNil(err) {
		t.Fatalf("n3's field after leave: %q (%v), want none", v, err)
	}
	if !slices.ContainsFunc(logs3, func(l string) bool { return l == "imapgate: cluster: node n3 left Redis" }) {
		t.Errorf("log %q", logs3)
	}
}
