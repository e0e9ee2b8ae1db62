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
// sweeping dead nodes, ban and known-good sync, ticket keys, probing),
// the subscriber, the known-good sharer and, if the node could not join
// at start, one diagnosis (Probe); all end on Close.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
	goodVer       string    // good:v at the last syncGood
	goodSynced    time.Time // when good:v was last looked at
	goodQ         chan goodEntry
	joinErr       atomic.Pointer[string] // why the last bringUp failed (masked); nil once up
	swept         bool                   // this node's stale share cleared since start
	dupWarned     bool
	beaten        bool   // a heartbeat has written this instance's id
	limitsBeat    int    // beats counted for checkLimits
	limitsLogged  string // the difference of limits last logged ("" none)
	limitsMine    string // this node's summary when last written
	limitsDiffer  atomic.Pointer[[]string]

	tickets *ticketKeys
	m       *metrics

	kick   chan struct{}
	stop   chan struct{}
	ctx    context.Context // the loop's calls; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
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
		kick: make(chan struct{}, 1), stop: make(chan struct{}), goodQ: make(chan goodEntry, goodQueue)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.degradedSince.Store(time.Now().UnixNano())
	c.m = newMetrics(c)
	return c, nil
}

// Node is this node's id.
func (c *Cluster) Node() string { return c.o.Node }

// Start attaches the limiter (limiter.SetShared) and, if Redis answers
// within a second, clears this node's stale share (a restart after a
// crash; two heartbeats later when its old process's liveness had not
// expired yet, see checkHolder), registers the node and publishes its
// (empty) share, so the limiter uses the shared limits from the first
// connection. If Redis does not answer, or another live process holds
// the node's id, the node starts on local limits and the loop keeps
// trying. Call it before serving.
func (c *Cluster) Start(l *limiter.Limiter) {
	c.l = l
	l.SetShared(c, c.o.OverLimitHold, c.o.Timeout)
	// A second, and two beats more when another process holds the
	// node's id (checkHolder).
	ctx, cancel := context.WithTimeout(context.Background(), time.Second+2*c.beatInterval()+100*time.Millisecond)
	err := c.bringUp(ctx)
	cancel()
	var dup errDuplicate
	switch {
	case errors.As(err, &dup):
		c.o.Log(fmt.Sprintf("imapgate: cluster: error: %v; this node stays on local limits until that process stops", err))
		c.m.fallbacks.Inc()
	case err != nil:
		c.o.Log(fmt.Sprintf("imapgate: cluster: Redis %s could not be used at start (%s); local limits until it answers", c.Redacted(), c.mask(err)))
		c.m.fallbacks.Inc()
		c.wg.Add(1)
		go c.diagnose()
	default:
		c.o.Log(fmt.Sprintf("imapgate: cluster: node %s joined through Redis %s (%s alive)", c.o.Node, c.Redacted(), nodesString(c.alive.Load())))
	}
	c.wg.Add(3) // and diagnose's, above
	go c.loop()
	go c.subscribe()
	go c.shareGood()
}

// diagnose runs -check's Probe once, when the node could not join at
// start, and logs what it finds if that is a mistake in [cluster] (a
// scheme the server does not speak, refused credentials, missing ACL
// rights, a socket the process may not open): the loop would retry it
// for ever, and the log would only say that Redis does not answer.
func (c *Cluster) diagnose() {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second) // Close cancels c.ctx
	defer cancel()
	var pe *ProbeError
	if _, err := Probe(ctx, c.o); errors.As(err, &pe) && pe.Kind != ProbeUnreachable && ctx.Err() == nil {
		c.o.Log(fmt.Sprintf("imapgate: cluster: error: %v; this node stays on local limits until [cluster] is fixed", err))
	}
}

// Close sends the releases not sent yet (limiter.DetachShared; the
// limiter stays on local limits), stops the loop, the subscriber and the
// known-good sharer, takes the node out of Redis (leave) and closes the
// client.
func (c *Cluster) Close() {
	c.once.Do(func() {
		if c.l != nil {
			c.l.DetachShared()
		}
		close(c.stop)
		c.cancel()
		c.wg.Wait() // the loop's heartbeat can no longer register the node again
		if cl := c.cli.Load(); cl != nil {
			c.leave(*cl)
			(*cl).Close()
		}
	})
}

// leave takes the node out of Redis (leaveScript: its liveness, its
// instance entry and its share; then its limits' summary), so the other
// nodes stop counting it at
// once, not after node_ttl, and a restart finds no other instance under
// its id. One call with the usual deadline; if it fails (Redis away),
// the node's liveness expires after node_ttl and the others sweep it, as
// for a node that died.
func (c *Cluster) leave(cl rueidis.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.Timeout)
	defer cancel()
	res, err := c.exec(ctx, "leave", leaveScript, cl, []string{c.k.nodes, c.k.inst, c.k.nodeSet(c.o.Node)},
		[]string{c.o.Node, c.inst}).AsInt64()
	switch {
	case err != nil:
		c.o.Log(fmt.Sprintf("imapgate: cluster: node %s could not leave Redis (%s); the others stop counting it after node_ttl (%s)", c.o.Node, c.mask(err), c.o.NodeTTL))
	case res == 0:
		c.o.Log(fmt.Sprintf("imapgate: cluster: node %s left Redis as it was: another process uses its id", c.o.Node))
	default:
		// Its limits no longer matter to the others (checkLimits).
		cl.Do(ctx, cl.B().Hdel().Key(c.k.limits).Field(c.o.Node).Build())
		c.o.Log(fmt.Sprintf("imapgate: cluster: node %s left Redis", c.o.Node))
	}
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
	c.o.Log(fmt.Sprintf("imapgate: cluster: Redis failed (%s); local limits until it answers", c.mask(err)))
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// bringUp makes the node part of the cluster: the shared secret, its
// stale share cleared (once per start), liveness, its share published
// (which switches the limiter to the shared limits), bans, the known-good
// tier and ticket keys.
func (c *Cluster) bringUp(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			msg := c.mask(err)
			c.joinErr.Store(&msg)
		} else {
			c.joinErr.Store(nil)
		}
	}()
	cl, err := c.client()
	if err != nil {
		return err
	}
	if err := c.loadSecret(ctx, cl); err != nil {
		return err
	}
	if !c.swept {
		if err := c.checkHolder(cl); err != nil {
			return err
		}
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
	if err := c.syncShared(ctx, cl, true); err != nil {
		return err
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

// exec runs a script, timing it for the metrics.
func (c *Cluster) exec(ctx context.Context, op string, s *rueidis.Lua, cl rueidis.Client, keys, args []string) rueidis.RedisResult {
	start := time.Now()
	res := s.Exec(ctx, cl, keys, args)
	c.m.observe(op, time.Since(start), res.Error())
	return res
}

// tlsUsed reports whether the connection to Redis is encrypted.
func (c *Cluster) tlsUsed() bool { return c.copt.TLSConfig != nil }

// nodesString is n nodes, in words ("1 node", "3 nodes").
func nodesString(n int64) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}
