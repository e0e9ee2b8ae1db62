package cluster

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"imapgate/limiter"
)

// Bans are stored in one hash, field "a:PREFIX" (an address is a /32 or
// /128) with value "UNTIL_µs", or "u:ADDR:USERHASH" with value "UNTIL_µs
// USER" for a user+address ban. Every change increments bans:v and is
// published on the channel ("ban FIELD VALUE", "unban PREFIX",
// "unbanuser ADDR USER"); a node applies messages as they come and, every
// beat, reloads the hash whole if bans:v moved, so a missed message costs
// at most a beat (1 s).

// banField is an address or network ban's field, userBanField a user's
// ban on one address (tag: the user name's keyed hash, userTag).
func banField(p netip.Prefix) string { return "a:" + p.String() }

func userBanField(a netip.Addr, tag string) string { return "u:" + a.String() + ":" + tag }

// parseBan reads a stored or published ban.
func parseBan(field, value string) (limiter.Ban, bool) {
	var b limiter.Ban
	untilStr, user, _ := strings.Cut(value, " ")
	us, err := strconv.ParseInt(untilStr, 10, 64)
	if err != nil {
		return b, false
	}
	b.Until = time.UnixMicro(us)
	switch {
	case strings.HasPrefix(field, "a:"):
		p, err := netip.ParsePrefix(field[2:])
		if err != nil {
			return b, false
		}
		b.Key = p
	case strings.HasPrefix(field, "u:"):
		i := strings.LastIndexByte(field, ':')
		a, err := netip.ParseAddr(field[2:i])
		if err != nil || user == "" {
			return b, false
		}
		b.Key, b.User = netip.PrefixFrom(a, a.BitLen()), user
	default:
		return b, false
	}
	return b, true
}

// syncBans reloads the stored bans if they changed since the last sync
// (always with full): they replace this node's, and expired ones are
// removed from the store.
func (c *Cluster) syncBans(ctx context.Context, cl rueidisClient, full bool) error {
	now := time.Now()
	var bans []limiter.Ban
	reloaded, err := c.reloadVersioned(ctx, cl, c.k.bansVer, c.k.bans, &c.banVer, full, func(f, v string) bool {
		b, ok := parseBan(f, v)
		if !ok || !b.Until.After(now) {
			return false
		}
		bans = append(bans, b)
		return true
	})
	if reloaded {
		c.l.ReplaceBans(bans)
	}
	return err
}

// reloadVersioned reads the hash if its version key moved from *ver
// since the last call (always with full): live is called with each entry
// and says whether it still holds; those that do not are removed from the
// store. It reports whether it read the hash (and *ver is the new
// version); the bans and the known-good tier are stored so.
func (c *Cluster) reloadVersioned(ctx context.Context, cl rueidisClient, verKey, hash string, ver *string, full bool,
	live func(field, value string) bool) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	v, err := cl.Do(ctx, cl.B().Get().Key(verKey).Build()).ToString()
	if err != nil && !isNil(err) {
		return false, err
	}
	if !full && v == *ver {
		return false, nil
	}
	m, err := cl.Do(ctx, cl.B().Hgetall().Key(hash).Build()).AsStrMap()
	if err != nil {
		return false, err
	}
	var dead []string
	for f, val := range m {
		if !live(f, val) {
			dead = append(dead, f)
		}
	}
	*ver = v
	if len(dead) > 0 {
		cl.Do(ctx, cl.B().Hdel().Key(hash).Field(dead...).Build())
	}
	return true, nil
}

// subscribe applies published bans, known-good entries and ticket-key
// rotations as they come, reconnecting while the cluster runs.
func (c *Cluster) subscribe() {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-c.stop; cancel() }()
	for ctx.Err() == nil {
		cl, err := c.conn()
		if err == nil {
			err = cl.Receive(ctx, cl.B().Subscribe().Channel(c.k.channel).Build(), c.message)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) message(m rueidisMessage) {
	verb, rest, _ := strings.Cut(m.Message, " ")
	switch verb {
	case "ban":
		field, value, _ := strings.Cut(rest, " ")
		if b, ok := parseBan(field, value); ok {
			c.l.ApplyBan(b)
		}
	case "unban":
		if p, err := netip.ParsePrefix(rest); err == nil {
			c.l.ApplyUnban(p)
		}
	case "unbanuser":
		addr, user, _ := strings.Cut(rest, " ")
		if a, err := netip.ParseAddr(addr); err == nil {
			c.l.ApplyUnbanUser(a, user)
		}
	case "good":
		field, value, _ := strings.Cut(rest, " ")
		if k, until, ok := parseGood(field, value); ok {
			c.l.LearnKnownGood(k, until, time.Now())
		}
	case "tk":
		if c.tickets != nil {
			select {
			case c.tickets.kick <- struct{}{}:
			default:
			}
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
	}
}
