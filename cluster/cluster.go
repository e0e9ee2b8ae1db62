// Package cluster lets several imapgate replicas enforce one set of
// limits, bans and TLS session ticket keys through Redis (or Redis behind
// Sentinel, or Redis Cluster through the client's cluster mode). It
// implements limiter.Shared: each node's connections are its own fields
// in Redis hashes (so a dead node's share can be dropped whole), an
// admission is one Lua script that checks every limit and takes every
// place or none, bans travel by pub/sub and a stored set.
//
// Every Redis call has a deadline (Options.Timeout). When Redis fails or
// is slow, the limiter switches to local limits at once; this package's
// loop probes Redis every 100 ms and, when it answers, republishes the
// node's live share and switches back. Goroutines: the loop (liveness,
// sweeping dead nodes, ban sync, ticket keys, probing) and the
// subscriber; both end on Close.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"imapgate/limiter"
)

// Cluster is one node's link to the shared state.
type Cluster struct {
	o    Options
	copt rueidis.ClientOption
	k    keys
	inst string // this process, to tell a restart or a duplicate node id
	l    *limiter.Limiter

	cli    atomic.Pointer[rueidis.Client]
	secret atomic.Pointer[[]byte]

	degradedSince atomic.Int64 // unix nanoseconds; 0: up
	rtt           atomic.Int64 // last heartbeat's round trip, ns
	alive         atomic.Int64
	banVer        string
	swept         bool // this node's stale share cleared since start
	dupWarned     bool

	tickets *ticketKeys
	m       *metrics

	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// New checks o and prepares the Redis client; nothing connects before
// Start.
func New(o Options) (*Cluster, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	copt, err := clientOption(o)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 8)
	rand.Read(id)
	c := &Cluster{o: o, copt: copt, k: newKeys(o.KeyPrefix), inst: hex.EncodeToString(id),
		kick: make(chan struct{}, 1), stop: make(chan struct{})}
	c.degradedSince.Store(time.Now().UnixNano())
	c.m = newMetrics(c)
	return c, nil
}

// Node is this node's id.
func (c *Cluster) Node() string { return c.o.Node }

// Start attaches the limiter (limiter.SetShared) and, if Redis answers
// within a second, clears this node's stale share (a restart after a
// crash), registers the node and publishes its (empty) share, so the
// limiter uses the shared limits from the first connection. If Redis does
// not answer, the node starts on local limits and the loop keeps trying.
// Call it before serving.
func (c *Cluster) Start(l *limiter.Limiter) {
	c.l = l
	l.SetShared(c, c.o.OverLimitHold, c.o.Timeout)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	err := c.bringUp(ctx)
	cancel()
	if err != nil {
		c.o.Log(fmt.Sprintf("imapgate: cluster: Redis %s unreachable at start (%v); local limits until it answers", c.Redacted(), err))
		c.m.fallbacks.Inc()
	} else {
		c.o.Log(fmt.Sprintf("imapgate: cluster: node %s joined through Redis %s (%d nodes alive)", c.o.Node, c.Redacted(), c.alive.Load()))
	}
	c.wg.Add(2)
	go c.loop()
	go c.subscribe()
}

// Close stops the loop and the subscriber and closes the client. The
// node's share stays until its liveness expires (or it restarts).
func (c *Cluster) Close() {
	c.once.Do(func() {
		close(c.stop)
		if cl := c.cli.Load(); cl != nil {
			(*cl).Close()
		}
		c.wg.Wait()
	})
}

// client returns the Redis client, connecting if there is none yet.
func (c *Cluster) client() (rueidis.Client, error) {
	if cl := c.cli.Load(); cl != nil {
		return *cl, nil
	}
	cl, err := rueidis.NewClient(c.copt)
	if err != nil {
		return nil, err
	}
	if !c.cli.CompareAndSwap(nil, &cl) {
		cl.Close()
		return *c.cli.Load(), nil
	}
	return cl, nil
}

// conn returns the client for a call; without one the call fails (the
// loop connects).
func (c *Cluster) conn() (rueidis.Client, error) {
	if cl := c.cli.Load(); cl != nil {
		return *cl, nil
	}
	return nil, errors.New("not connected")
}

// Down implements limiter.Shared: log once per outage, count it, and
// wake the loop to probe.
func (c *Cluster) Down(err error) {
	if !c.degradedSince.CompareAndSwap(0, time.Now().UnixNano()) {
		return
	}
	c.m.fallbacks.Inc()
	c.o.Log(fmt.Sprintf("imapgate: cluster: Redis failed (%v); local limits until it answers", err))
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// bringUp makes the node part of the cluster: the shared secret, its
// stale share cleared (once per start), liveness, its share published
// (which switches the limiter to the shared limits), bans and ticket keys.
func (c *Cluster) bringUp(ctx context.Context) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	if err := c.loadSecret(ctx, cl); err != nil {
		return err
	}
	if !c.swept {
		if err := c.sweep(ctx, cl, c.o.Node, true); err != nil {
			return err
		}
		c.swept = true
	}
	if _, err := c.heartbeat(ctx, cl); err != nil {
		return err
	}
	// The share first (with the bans made here meanwhile), then the
	// stored bans replace this node's.
	if err := c.l.Republish(ctx, time.Now()); err != nil {
		return err
	}
	if err := c.syncBans(ctx, cl, true); err != nil {
		return err
	}
	if c.tickets != nil {
		c.tickets.refresh(ctx, c, true)
	}
	c.degradedSince.Store(0)
	return nil
}

// loadSecret reads (or makes) the cluster's secret: the key of attempt
// keys (so replicas recognise each other's retries of a password) and of
// the user names' hashes in Redis keys.
func (c *Cluster) loadSecret(ctx context.Context, cl rueidis.Client) error {
	b := make([]byte, 32)
	rand.Read(b)
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	res := cl.DoMulti(ctx, cl.B().Set().Key(c.k.secret).Value(string(b)).Nx().Build(), cl.B().Get().Key(c.k.secret).Build())
	s, err := res[1].ToString()
	if err != nil {
		return err
	}
	if len(s) != 32 {
		return fmt.Errorf("%s: want 32 bytes, found %d", c.k.secret, len(s))
	}
	sb := []byte(s)
	if old := c.secret.Load(); old == nil || string(*old) != s {
		c.secret.Store(&sb)
		limiter.SetAttemptSecret(sb)
	}
	return nil
}

// loop renews liveness and syncs bans every beat while up, and probes
// Redis every 100 ms while down.
func (c *Cluster) loop() {
	defer c.wg.Done()
	beat := min(500*time.Millisecond, c.o.NodeTTL/3)
	t := time.NewTimer(beat)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		case <-c.kick:
		}
		if c.degradedSince.Load() != 0 || !c.l.SharedUp() {
			ctx, cancel := context.WithTimeout(context.Background(), max(20*c.o.Timeout, time.Second))
			err := c.bringUp(ctx)
			cancel()
			if err != nil {
				t.Reset(100 * time.Millisecond)
				continue
			}
			c.o.Log(fmt.Sprintf("imapgate: cluster: Redis answers again; shared limits resumed, this node's share republished (%d nodes alive)", c.alive.Load()))
		} else if err := c.beat(); err != nil {
			c.l.SharedFailed(err)
			t.Reset(100 * time.Millisecond)
			continue
		}
		t.Reset(beat)
	}
}

var errLost = errors.New("this node's registration is gone (Redis restarted empty, or failed over to a replica that lacked it)")

// beat renews liveness, drops dead nodes' shares, syncs bans and keeps the
// ticket keys current.
func (c *Cluster) beat() error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	ctx := context.Background()
	dead, err := c.heartbeat(ctx, cl)
	if err != nil {
		return err
	}
	for _, n := range dead {
		if err := c.sweep(ctx, cl, n, false); err != nil {
			return err
		}
	}
	if err := c.syncBans(ctx, cl, false); err != nil {
		return err
	}
	if c.tickets != nil {
		c.tickets.refresh(ctx, c, false)
	}
	return nil
}

// heartbeat renews this node's liveness and returns the dead nodes. An
// error says the node had lost its registration.
func (c *Cluster) heartbeat(ctx context.Context, cl rueidis.Client) ([]string, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	wasUp := c.degradedSince.Load() == 0
	res, err := c.exec(ctx, "heartbeat", heartbeatScript, cl, []string{c.k.nodes, c.k.inst},
		[]string{c.o.Node, c.inst, fmt.Sprint(c.o.NodeTTL.Milliseconds())}).ToArray()
	if err != nil {
		return nil, err
	}
	c.rtt.Store(int64(time.Since(start)))
	reg, _ := res[0].AsInt64()
	inst, _ := res[1].ToString()
	n, _ := res[2].AsInt64()
	c.alive.Store(n)
	var dead []string
	if arr, err := res[3].ToArray(); err == nil {
		for _, m := range arr {
			if s, err := m.ToString(); err == nil {
				dead = append(dead, s)
			}
		}
	}
	if reg == 1 && inst != c.inst && inst != "" && !c.dupWarned {
		c.dupWarned = true
		c.o.Log(fmt.Sprintf("imapgate: cluster: warning: another process uses node id %q (instance %s): give each replica its own cluster.node", c.o.Node, inst))
	}
	if reg == 0 && wasUp && c.l.SharedUp() {
		return dead, errLost
	}
	return dead, nil
}

// sweep drops a node's contributions: a dead node's (unless it came back)
// or, with force, this node's own stale share at start.
func (c *Cluster) sweep(ctx context.Context, cl rueidis.Client, node string, force bool) error {
	f := "0"
	if force {
		f = "1"
	}
	for i := 0; i < 1000; i++ {
		cctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		more, err := c.exec(cctx, "sweep", sweepScript, cl, []string{c.k.nodes, c.k.inst, c.k.nodeSet(node)}, []string{node, f}).AsInt64()
		cancel()
		if err != nil {
			return err
		}
		if more == 0 {
			return nil
		}
	}
	return nil
}

// exec runs a script, timing it for the metrics.
func (c *Cluster) exec(ctx context.Context, op string, s *rueidis.Lua, cl rueidis.Client, keys, args []string) rueidis.RedisResult {
	start := time.Now()
	res := s.Exec(ctx, cl, keys, args)
	c.m.observe(op, time.Since(start), res.Error())
	return res
}

// keys names the Redis keys, all under one hash tag.
type keys struct {
	p                                   string // "{prefix}:"
	nodes, inst, total, bans, bansVer   string
	channel, secret, tickets, ticketsLk string
}

func newKeys(prefix string) keys {
	p := "{" + prefix + "}:"
	return keys{p: p, nodes: p + "nodes", inst: p + "inst", total: p + "c:t", bans: p + "bans", bansVer: p + "bans:v",
		channel: p + "ev", secret: p + "secret", tickets: p + "tk", ticketsLk: p + "tk:lease"}
}

func (k keys) nodeSet(node string) string { return k.p + "n:" + node }

// none is a key no script writes, for arguments a call does not use.
func (k keys) none() string { return k.p + "none" }

func (c *Cluster) userTag(user string) string {
	s := c.secret.Load()
	if s == nil {
		return ""
	}
	return userHash(*s, strings.ToLower(user))
}

// tlsUsed reports whether the connection to Redis is encrypted.
func (c *Cluster) tlsUsed() bool { return c.copt.TLSConfig != nil }
