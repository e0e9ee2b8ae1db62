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
	beat := c.beatInterval()
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
			ctx, cancel := context.WithTimeout(c.ctx, max(20*c.o.Timeout, time.Second)+2*beat+100*time.Millisecond) // checkHolder's wait
			err := c.bringUp(ctx)
			cancel()
			if err != nil {
				t.Reset(100 * time.Millisecond)
				continue
			}
			c.o.Log(fmt.Sprintf("imapgate: cluster: Redis answers again; shared limits resumed, this node's share republished (%s alive)", nodesString(c.alive.Load())))
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
	if err := c.checkLimits(ctx, cl); err != nil {
		return err
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

// errDuplicate: another live process holds this node's id.
type errDuplicate struct{ node, inst string }

func (e errDuplicate) Error() string {
	return fmt.Sprintf("another live process uses node id %q (instance %s): give each replica its own cluster.node", e.node, e.inst)
}

// checkHolder runs before a node first clears its stale share: if
// another instance holds its id and its liveness has not expired, that is
// either this node's previous process, killed within node_ttl, or a
// second live process with the same id, whose share the clearing would
// erase (letting its sessions out of the shared counts). A live process
// renews its liveness every beat: the score is read again after two
// beats, and if it moved, the node does not join (errDuplicate; it stays
// on local limits and tries again, joining once the other is gone).
func (c *Cluster) checkHolder(cl rueidis.Client) error {
	read := func() (now, score int64, inst string, err error) {
		ctx, cancel := context.WithTimeout(c.ctx, c.o.Timeout)
		defer cancel()
		res, err := c.exec(ctx, "holder", holderScript, cl, []string{c.k.nodes, c.k.inst}, []string{c.o.Node}).ToArray()
		if err != nil {
			return 0, 0, "", err
		}
		if len(res) != 3 {
			return 0, 0, "", fmt.Errorf("holder: %d values", len(res))
		}
		now, _ = res[0].AsInt64()
		score, _ = res[1].AsInt64()
		inst, _ = res[2].ToString()
		return now, score, inst, nil
	}
	now, score, inst, err := read()
	if err != nil || inst == "" || inst == c.inst || score < now {
		return err
	}
	select {
	case <-time.After(2*c.beatInterval() + 100*time.Millisecond):
	case <-c.stop:
		return errors.New("closed")
	}
	_, score2, inst2, err := read()
	if err != nil {
		return err
	}
	if inst2 != "" && inst2 != c.inst && score2 > score {
		return errDuplicate{c.o.Node, inst2}
	}
	return nil // the previous process, dead: its share is cleared next
}

// beatInterval is how often the loop renews the node's liveness.
func (c *Cluster) beatInterval() time.Duration { return min(500*time.Millisecond, c.o.NodeTTL/3) }

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
