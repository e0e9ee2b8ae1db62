package cluster

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// The known-good tier (limiter's: an office or campus behind NAT, from
// which several users log in) is shared, so that every replica gives it
// the tier's limits. Learned per node, a replica that restarted, or that
// round robin never showed three of the office's users, checks the
// ordinary limits against the shared counts, which the office's sessions
// on the other replicas exceed, and refuses it: a third of the office's
// connections with three replicas, and that replica never admits one to
// learn from.
//
// One hash, field PREFIX (an address is a /32 or /128), value UNTIL_µs,
// the latest known-good time any node found. A node hands over an entry
// when it becomes known-good or its time moves an hour (limiter: a 24th
// of the window), from a goroutine of its own, never in a login's path;
// the script keeps the later time, bumps good:v and publishes "good
// PREFIX UNTIL_µs" when the time moved. Nodes apply messages as they
// come, reload the hash whole when they (re)join, and again when good:v
// moved and goodResync has passed, so a missed message costs at most
// that.

// goodResync bounds how often a node looks at good:v and reloads the
// known-good hash if it moved: the hash can hold thousands of entries,
// and the tier changes slowly.
const goodResync = 10 * time.Second

// goodQueue bounds the entries waiting to be handed over; more are
// dropped (and go again when their time next moves).
const goodQueue = 256

type goodEntry struct {
	k     netip.Prefix
	until time.Time
}

// goodScript keeps the later known-good time of a prefix.
// KEYS: the hash, its version. ARGV: field, until µs, channel.
// Returns 1 if the time moved (and was published), else 0.
var goodScript = rueidis.NewLuaScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= cur then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], 'good ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
`)

// KnownGood implements limiter.Shared: it queues k for the goroutine
// that hands it over (shareGood), without blocking; a full queue drops it.
func (c *Cluster) KnownGood(k netip.Prefix, until time.Time) {
	select {
	case c.goodQ <- goodEntry{k, until}:
	default:
	}
}

// shareGood hands queued known-good entries to Redis, one script call
// each, until Close. A failed call is counted (op "good") and the entry
// dropped: the node that found it still applies it, and it goes again
// when its time next moves.
func (c *Cluster) shareGood() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case e := <-c.goodQ:
			cl, err := c.conn()
			if err != nil || c.Degraded() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.o.Timeout)
			c.exec(ctx, "good", goodScript, cl, []string{c.k.good, c.k.goodVer},
				[]string{e.k.String(), strconv.FormatInt(e.until.UnixMicro(), 10), c.k.channel})
			cancel()
		}
	}
}

// syncGood reloads the stored known-good entries into the limiter if
// good:v moved since the last look, at most every goodResync (always with
// full), and removes the expired ones from the store.
func (c *Cluster) syncGood(ctx context.Context, cl rueidisClient, full bool) error {
	now := time.Now()
	if !full && now.Sub(c.goodSynced) < goodResync {
		return nil
	}
	_, err := c.reloadVersioned(ctx, cl, c.k.goodVer, c.k.good, &c.goodVer, full, func(f, v string) bool {
		k, until, ok := parseGood(f, v)
		if ok && until.After(now) {
			c.l.LearnKnownGood(k, until, now)
		}
		return ok && until.After(now)
	})
	if err == nil {
		c.goodSynced = now
	}
	return err
}

// parseGood reads a stored or published known-good entry.
func parseGood(field, value string) (netip.Prefix, time.Time, bool) {
	k, err := netip.ParsePrefix(field)
	if err != nil {
		return netip.Prefix{}, time.Time{}, false
	}
	us, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
	if err != nil || us <= 0 {
		return netip.Prefix{}, time.Time{}, false
	}
	return k, time.UnixMicro(us), true
}
