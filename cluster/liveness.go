package cluster

// A node's liveness and its loop: heartbeats (a sorted set scored with
// Redis's clock), sweeping dead nodes' shares, probing Redis while
// degraded.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

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
			ctx, cancel := context.WithTimeout(c.ctx, max(20*c.o.Timeout, time.Second))
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

// beat renews liveness, drops dead nodes' shares, syncs bans and the
// known-good tier and keeps the ticket keys current.
func (c *Cluster) beat() error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	ctx := c.ctx
	dead, err := c.heartbeat(ctx, cl)
	if err != nil {
		return err
	}
	for _, n := range dead {
		if err := c.sweep(ctx, cl, n, false); err != nil {
			return err
		}
	}
	return c.syncShared(ctx, cl, false)
}

// syncShared takes what other nodes changed: the bans, the known-good
// tier (each reloaded when its version moved, or always with full) and
// the ticket keys.
func (c *Cluster) syncShared(ctx context.Context, cl rueidis.Client, full bool) error {
	if err := c.syncBans(ctx, cl, full); err != nil {
		return err
	}
	if err := c.syncGood(ctx, cl, full); err != nil {
		return err
	}
	if c.tickets != nil {
		c.tickets.refresh(ctx, c, full)
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
	// Another instance's id where this one wrote its own at an earlier
	// beat is a second live process with this node id. At the first beat
	// it is most often this node's own previous process, killed and
	// restarted within node_ttl, so it is not warned about then: a live
	// duplicate overwrites the id again and is seen at the next beat.
	if reg == 1 && inst != c.inst && inst != "" && c.beaten && !c.dupWarned {
		c.dupWarned = true
		c.o.Log(fmt.Sprintf("imapgate: cluster: warning: another process uses node id %q (instance %s): give each replica its own cluster.node", c.o.Node, inst))
	}
	c.beaten = true
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
