package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"imapgate/limiter"
)

// The limiter.Shared methods. Counts are hashes with one field per node;
// keys: c:a:ADDR, c:p:PREFIX, c:u:ADDR:USERHASH, c:t (the total); rates
// r:a:ADDR, r:p:PREFIX (a GCRA arrival time in µs); failure records
// f:u:ADDR:USERHASH, f:a:ADDR, f:p:PREFIX, and f:m:ADDR, which marks an
// address with failures on record.

var errNotRegistered = errors.New("node not registered in Redis")

func (c *Cluster) addrKey(a netip.Addr) string         { return c.k.p + "c:a:" + a.String() }
func (c *Cluster) prefixKey(p netip.Prefix) string     { return c.k.p + "c:p:" + p.String() }
func (c *Cluster) rateAddrKey(a netip.Addr) string     { return c.k.p + "r:a:" + a.String() }
func (c *Cluster) ratePrefixKey(p netip.Prefix) string { return c.k.p + "r:p:" + p.String() }

func (c *Cluster) userKey(a netip.Addr, user string) string {
	if user == "" {
		return c.k.none()
	}
	return c.k.p + "c:u:" + a.String() + ":" + c.userTag(user)
}

func (c *Cluster) failUserKey(a netip.Addr, user string) string {
	return c.k.p + "f:u:" + a.String() + ":" + c.userTag(user)
}

// userHash names a user in keys and ban fields: 64 bits of an HMAC keyed
// with the cluster's secret, so Redis holds no user names there.
func userHash(secret []byte, user string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(user))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// micros converts nanoseconds of refill to µs, at least 1 if positive.
func micros(ns int64) string {
	if ns <= 0 {
		return "0"
	}
	return strconv.FormatInt(max(ns/1000, 1), 10)
}

func rateArgs(r limiter.Rate, on bool) (interval, burst string) {
	if !on || r.Burst <= 0 || r.Per <= 0 {
		return "0", "0"
	}
	return micros(int64(r.Per) / int64(r.Burst)), strconv.Itoa(r.Burst)
}

func b01(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Admit implements limiter.Shared.
func (c *Cluster) Admit(ctx context.Context, q *limiter.SharedAdmit) (limiter.SharedResult, error) {
	var r limiter.SharedResult
	cl, err := c.conn()
	if err != nil {
		return r, err
	}
	ai, ab := rateArgs(q.Limits.RatePerIP, !q.Exempt)
	pi, pb := rateArgs(q.Limits.RatePerPrefix, !q.Exempt)
	keys, args := c.releaseArgs(
		[]string{c.k.nodes, c.k.total, c.addrKey(q.Addr), c.prefixKey(q.Prefix), c.rateAddrKey(q.Addr),
			c.ratePrefixKey(q.Prefix), c.k.nodeSet(c.o.Node), c.k.p + "f:m:" + q.Addr.String()},
		[]string{c.o.Node, strconv.FormatInt(q.Now.UnixMicro(), 10), b01(q.Exempt), strconv.Itoa(q.Limits.MaxConnections),
			strconv.Itoa(q.Limits.MaxPerIP), strconv.Itoa(q.Limits.MaxPerPrefix), ai, ab, pi, pb, strconv.Itoa(int(q.DryRun))},
		q.Releases)
	res, err := c.exec(ctx, "admit", admitScript, cl, keys, args).AsIntSlice()
	if r, err = verdict("admit", res, err, 6); err != nil {
		return r, err
	}
	if res[4] > 0 {
		r.RetryAt = time.UnixMicro(res[4])
	}
	r.Failures = res[5] == 1
	return r, nil
}

// Release implements limiter.Shared: one script call for the batch.
func (c *Cluster) Release(ctx context.Context, qs []*limiter.SharedRelease) error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	keys, args := c.releaseArgs([]string{c.k.nodeSet(c.o.Node)}, []string{c.o.Node}, qs)
	if err := c.exec(ctx, "release", releaseScript, cl, keys, args).Error(); err != nil {
		return fmt.Errorf("release of %d sessions: %w", len(qs), err)
	}
	return nil
}

// releaseArgs appends to a script's keys and args the batch qs in the
// form applyReleases reads: the decrements summed per count key (in the
// order first seen), then the re-spends in order, each with its time.
func (c *Cluster) releaseArgs(keys, args []string, qs []*limiter.SharedRelease) ([]string, []string) {
	type respend struct {
		key      string
		now, dur int64 // µs, ns
	}
	if len(qs) == 0 {
		return keys, append(args, "0", "0")
	}
	// Count keys in first-seen order: a scan while there are few (the
	// usual batch, and the admission call's), a map past 16.
	var order []string
	var dec []int
	var idx map[string]int
	var resp []respend
	count := func(k string) {
		if idx != nil {
			if i, ok := idx[k]; ok {
				dec[i]++
				return
			}
		} else {
			for i, o := range order {
				if o == k {
					dec[i]++
					return
				}
			}
		}
		order, dec = append(order, k), append(dec, 1)
		if idx != nil {
			idx[k] = len(order) - 1
		} else if len(order) > 16 {
			idx = make(map[string]int, 2*len(order))
			for i, o := range order {
				idx[o] = i
			}
		}
	}
	for _, q := range qs {
		if q.Total {
			count(c.k.total)
		}
		if q.IP {
			count(c.addrKey(q.Addr))
		}
		if q.InPrefix {
			count(c.prefixKey(q.Prefix))
		}
		if q.User != "" {
			count(c.userKey(q.Addr, q.User))
		}
		if q.RespendIP > 0 {
			resp = append(resp, respend{c.rateAddrKey(q.Addr), q.Now.UnixMicro(), q.RespendIP})
		}
		if q.RespendPrefix > 0 {
			resp = append(resp, respend{c.ratePrefixKey(q.Prefix), q.Now.UnixMicro(), q.RespendPrefix})
		}
	}
	args = append(args, strconv.Itoa(len(order)), strconv.Itoa(len(resp)))
	for i, k := range order {
		keys, args = append(keys, k), append(args, strconv.Itoa(dec[i]))
	}
	for _, r := range resp {
		keys, args = append(keys, r.key), append(args, strconv.FormatInt(r.now, 10), micros(r.dur))
	}
	return keys, args
}

// Login implements limiter.Shared.
func (c *Cluster) Login(ctx context.Context, q *limiter.SharedLogin) (limiter.SharedResult, error) {
	var r limiter.SharedResult
	cl, err := c.conn()
	if err != nil {
		return r, err
	}
	res, err := c.exec(ctx, "login", loginScript, cl,
		[]string{c.k.nodes, c.userKey(q.Addr, q.User), c.k.nodeSet(c.o.Node), c.rateAddrKey(q.Addr), c.ratePrefixKey(q.Prefix)},
		[]string{c.o.Node, strconv.Itoa(q.MaxPerUserIP), strconv.Itoa(int(q.DryRun)), strconv.FormatInt(q.Now.UnixMicro(), 10),
			micros(q.RefundIP), micros(q.RefundPrefix)}).AsIntSlice()
	return verdict("login", res, err, 4)
}

// verdict decodes what the admission and login scripts answer first:
// refused (1), the reason, the limit and the dry-run bits, in an answer of
// at least want integers (Redis's bytes are checked, not trusted); -1 in
// the first says this node is not registered.
func verdict(op string, res []int64, err error, want int) (limiter.SharedResult, error) {
	var r limiter.SharedResult
	switch {
	case err != nil:
		return r, err
	case len(res) < want:
		return r, fmt.Errorf("%s: short answer %v", op, res)
	case res[0] < 0:
		return r, errNotRegistered
	case res[1] < 0 || res[1] >= int64(limiter.NumReasons):
		return r, fmt.Errorf("%s: reason %d out of range", op, res[1])
	}
	r.Refused, r.Reason, r.Limit, r.WouldRefuse = res[0] == 1, limiter.Reason(res[1]), int(res[2]), uint16(res[3])
	return r, nil
}

// Succeeded implements limiter.Shared.
func (c *Cluster) Succeeded(ctx context.Context, q *limiter.SharedLogin) error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	return c.exec(ctx, "succeeded", succeededScript, cl,
		[]string{c.rateAddrKey(q.Addr), c.ratePrefixKey(q.Prefix), c.failUserKey(q.Addr, q.User)},
		[]string{strconv.FormatInt(q.Now.UnixMicro(), 10), micros(q.RefundIP), micros(q.RefundPrefix), b01(q.Forget)}).Error()
}

// Failure implements limiter.Shared.
func (c *Cluster) Failure(ctx context.Context, q *limiter.SharedFailure) (limiter.SharedFailureResult, error) {
	var r limiter.SharedFailureResult
	cl, err := c.conn()
	if err != nil {
		return r, err
	}
	pen := q.Penalty
	tag := c.userTag(q.User)
	tag32, _ := strconv.ParseUint(tag[:8], 16, 32)
	host := netip.PrefixFrom(q.Addr, q.Addr.BitLen())
	res, err := c.exec(ctx, "failure", failureScript, cl,
		[]string{c.failUserKey(q.Addr, q.User), c.k.p + "f:a:" + q.Addr.String(), c.k.p + "f:p:" + q.Prefix.String(),
			c.k.p + "f:m:" + q.Addr.String(), c.k.bans, c.k.bansVer},
		[]string{strconv.FormatInt(q.Now.UnixMicro(), 10), strconv.FormatUint(q.Attempt&0xffffffff, 10), strconv.FormatUint(tag32, 10),
			micros(int64(pen.Window)), strconv.Itoa(pen.Failures), strconv.Itoa(pen.MinUsers), strconv.Itoa(pen.UserFailures),
			strconv.Itoa(pen.SprayFailures), strconv.Itoa(pen.PrefixFailures), micros(int64(pen.BanTime)), b01(q.Shared),
			b01(q.PrefixGood), banField(host), banField(q.Prefix), userBanField(q.Addr, tag), q.User,
			c.k.channel}).ToArray()
	if err != nil {
		return r, err
	}
	if len(res) < 3 {
		return r, fmt.Errorf("failure: short answer")
	}
	counted, _ := res[0].AsInt64()
	uc, _ := res[1].AsInt64()
	ac, _ := res[2].AsInt64()
	r.Retried, r.UserCount, r.AddrCount = q.Attempt != 0 && counted == 0, int(uc), int(ac)
	if len(res) >= 7 {
		field, _ := res[3].ToString()
		until, _ := res[4].AsInt64()
		failures, _ := res[5].AsInt64()
		narrowed, _ := res[6].AsInt64()
		user := ""
		if field[0] == 'u' {
			user = q.User
		}
		if b, ok := parseBan(field, strconv.FormatInt(until, 10)+" "+user); ok {
			b.Failures, b.Narrowed = int(failures), narrowed == 1
			r.Ban = &b
		}
	}
	return r, nil
}

// Ban implements limiter.Shared.
func (c *Cluster) Ban(ctx context.Context, b limiter.Ban) error { return c.pushBan(ctx, b, false) }

// pushBan stores and publishes b; republish: unless an unban made while
// this node was degraded lifted it (Snapshot.Lifted, noteLifted).
func (c *Cluster) pushBan(ctx context.Context, b limiter.Ban, republish bool) error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	check := "0"
	if republish {
		check = "1"
	}
	return c.exec(ctx, "ban", pushBanScript, cl, []string{c.k.bans, c.k.bansVer, c.k.lifted},
		[]string{c.fieldOf(b), strconv.FormatInt(b.Until.UnixMicro(), 10), b.User, c.k.channel, check}).Error()
}

// fieldOf is b's field in the bans hash (and in the lifted set).
func (c *Cluster) fieldOf(b limiter.Ban) string {
	if b.User != "" {
		return userBanField(b.Key.Addr(), c.userTag(b.User))
	}
	return banField(b.Key)
}

// noteLifted records bans that unbans made while degraded lifted, each
// with its until, so that nodes republishing after the outage do not
// store them again (pushBan); entries whose until passed are dropped.
func (c *Cluster) noteLifted(ctx context.Context, cl rueidis.Client, lifted []limiter.Ban) error {
	now := strconv.FormatInt(time.Now().UnixMicro(), 10)
	cmds := rueidis.Commands{cl.B().Zrangebyscore().Key(c.k.lifted).Min("-inf").Max(now).Build()}
	for _, b := range lifted {
		cmds = append(cmds, cl.B().Zadd().Key(c.k.lifted).Gt().ScoreMember().ScoreMember(float64(b.Until.UnixMicro()), c.fieldOf(b)).Build())
	}
	res := cl.DoMulti(ctx, cmds...)
	for _, r := range res {
		if err := r.Error(); err != nil {
			return err
		}
	}
	if old, _ := res[0].AsStrSlice(); len(old) > 0 {
		return cl.Do(ctx, cl.B().Zrem().Key(c.k.lifted).Member(old...).Build()).Error()
	}
	return nil
}

// Unban implements limiter.Shared: the ban on k, the user bans on the
// addresses in k, and their failure records, on every node.
func (c *Cluster) Unban(ctx context.Context, k netip.Prefix) error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	fields, err := cl.Do(ctx, cl.B().Hkeys().Key(c.k.bans).Build()).AsStrSlice()
	if err != nil {
		return err
	}
	cmds := rueidis.Commands{cl.B().Hdel().Key(c.k.bans).Field(banField(k)).Build()}
	if k.IsSingleIP() {
		cmds = append(cmds, cl.B().Del().Key(c.k.p+"f:a:"+k.Addr().String(), c.k.p+"f:m:"+k.Addr().String()).Build())
	} else {
		cmds = append(cmds, cl.B().Del().Key(c.k.p+"f:p:"+k.String()).Build())
	}
	for _, f := range fields {
		if b, ok := parseBan(f, "0 -"); ok && b.User != "" && k.Contains(b.Key.Addr()) {
			cmds = append(cmds, cl.B().Hdel().Key(c.k.bans).Field(f).Build(),
				cl.B().Del().Key(c.k.p+"f:u:"+f[2:]).Build())
		}
	}
	cmds = append(cmds, cl.B().Incr().Key(c.k.bansVer).Build(), cl.B().Publish().Channel(c.k.channel).Message("unban "+k.String()).Build())
	return c.multi(ctx, "unban", cl, cmds)
}

// UnbanUser implements limiter.Shared.
func (c *Cluster) UnbanUser(ctx context.Context, a netip.Addr, user string) error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	return c.multi(ctx, "unban", cl, rueidis.Commands{
		cl.B().Hdel().Key(c.k.bans).Field(userBanField(a, c.userTag(user))).Build(),
		cl.B().Del().Key(c.failUserKey(a, user)).Build(),
		cl.B().Incr().Key(c.k.bansVer).Build(),
		cl.B().Publish().Channel(c.k.channel).Message("unbanuser " + a.String() + " " + user).Build(),
	})
}

func (c *Cluster) multi(ctx context.Context, op string, cl rueidis.Client, cmds rueidis.Commands) error {
	start := time.Now()
	var first error
	for _, r := range cl.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) && first == nil {
			first = err
		}
	}
	c.m.observe(op, time.Since(start), first)
	return first
}

// Publish implements limiter.Shared: this node's share becomes s, field by
// field (others never see it drop to zero meanwhile), then the node's
// fields that s lacks are removed; bans made here that the store lacks
// are stored and published. Batches of 512 commands, each with ten times
// the call deadline.
func (c *Cluster) Publish(ctx context.Context, s *limiter.Snapshot) error {
	cl, err := c.conn()
	if err != nil {
		return err
	}
	if _, err := c.heartbeat(ctx, cl); err != nil && !errors.Is(err, errLost) {
		return err
	}
	set := c.k.nodeSet(c.o.Node)
	bctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	old, err := cl.Do(bctx, cl.B().Smembers().Key(set).Build()).AsStrSlice()
	cancel()
	if err != nil {
		return err
	}
	want := map[string]int{}
	if s.Total > 0 {
		want[c.k.total] = s.Total
	}
	for a, n := range s.Addrs {
		want[c.addrKey(a)] = n
	}
	for p, n := range s.Prefixes {
		want[c.prefixKey(p)] = n
	}
	for _, u := range s.Users {
		want[c.userKey(u.Addr, u.User)] += u.N
	}
	var cmds rueidis.Commands
	for k, n := range want {
		cmds = append(cmds, cl.B().Hset().Key(k).FieldValue().FieldValue(c.o.Node, strconv.Itoa(n)).Build(),
			cl.B().Sadd().Key(set).Member(k).Build())
	}
	for _, k := range old {
		if _, ok := want[k]; !ok {
			cmds = append(cmds, cl.B().Hdel().Key(k).Field(c.o.Node).Build(), cl.B().Srem().Key(set).Member(k).Build())
		}
	}
	if _, ok := want[c.k.total]; !ok {
		cmds = append(cmds, cl.B().Hdel().Key(c.k.total).Field(c.o.Node).Build())
	}
	for len(cmds) > 0 {
		n := min(len(cmds), 512)
		bctx, cancel := context.WithTimeout(ctx, 10*c.o.Timeout)
		err := c.multi(bctx, "publish", cl, cmds[:n])
		cancel()
		if err != nil {
			return err
		}
		cmds = cmds[n:]
	}
	if len(s.Lifted) > 0 {
		bctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		err := c.noteLifted(bctx, cl, s.Lifted)
		cancel()
		if err != nil {
			return err
		}
	}
	for _, u := range s.Unbans {
		bctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		if u.User != "" {
			err = c.UnbanUser(bctx, u.Key.Addr(), u.User)
		} else {
			err = c.Unban(bctx, u.Key)
		}
		cancel()
		if err != nil {
			return err
		}
	}
	for _, b := range s.Bans {
		bctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		err := c.pushBan(bctx, b, true)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}
