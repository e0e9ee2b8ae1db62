package cluster

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"imapgate/limiter"
)

// Every node checks the shared counts against its own [limits]: a node
// with max_per_ip = 2 refuses the third place while one with 5 still
// admits it, and nothing else would tell the admin that the replicas'
// files differ. So each node writes a summary of its limits to a hash,
// and compares it with the other nodes' every limitsEvery beats (10 s at
// the default 500 ms), logging once when they differ and once when they
// agree again.
const limitsEvery = 20

// limitsSummary is the part of p that decides the shared counts, as
// "key=value" words in a fixed order. Overrides are compared by their
// number and prefixes only: their values are in the access file, which
// the replicas share or not as a whole.
func limitsSummary(p *limiter.Policy) string {
	l := p.Limits
	rate := func(r limiter.Rate) string {
		if r.Burst <= 0 || r.Per <= 0 {
			return "off"
		}
		return fmt.Sprintf("%d/%s", r.Burst, r.Per)
	}
	w := []string{
		"max_connections=" + strconv.Itoa(l.MaxConnections),
		"max_per_ip=" + strconv.Itoa(l.MaxPerIP),
		"max_per_prefix=" + strconv.Itoa(l.MaxPerPrefix),
		"max_per_user_ip=" + strconv.Itoa(l.MaxPerUserIP),
		"rate_per_ip=" + rate(l.RatePerIP),
		"rate_per_prefix=" + rate(l.RatePerPrefix),
		fmt.Sprintf("prefixes=/%d,/%d", p.IPv4Prefix, p.IPv6Prefix),
	}
	if len(p.Overrides) > 0 {
		prefixes := make([]string, len(p.Overrides))
		for i, o := range p.Overrides {
			prefixes[i] = o.Prefix.String()
		}
		slices.Sort(prefixes)
		w = append(w, "overrides="+strings.Join(prefixes, ","))
	}
	return strings.Join(w, " ")
}

// limitsDiff names what other differs in from mine ("max_per_ip=5 (here
// 2)"), word by word.
func limitsDiff(mine, other string) []string {
	have := map[string]string{}
	for _, w := range strings.Fields(mine) {
		k, v, _ := strings.Cut(w, "=")
		have[k] = v
	}
	var diff []string
	seen := map[string]bool{}
	for _, w := range strings.Fields(other) {
		k, v, _ := strings.Cut(w, "=")
		seen[k] = true
		if h, ok := have[k]; !ok || h != v {
			diff = append(diff, fmt.Sprintf("%s=%s (here %s)", k, v, cmp.Or(have[k], "none")))
		}
	}
	for _, w := range strings.Fields(mine) {
		if k, v, _ := strings.Cut(w, "="); !seen[k] {
			diff = append(diff, fmt.Sprintf("%s=none (here %s)", k, v))
		}
	}
	return diff
}

// checkLimits writes this node's summary and compares the others' (those
// written within three checks: a node gone stops counting), every
// limitsEvery beats, at the first, and at the first after a reload
// changed this node's limits. It logs a difference once, and when the
// limits agree again; LimitsDiffer in Status lists it meanwhile.
func (c *Cluster) checkLimits(ctx context.Context, cl rueidisClient) error {
	mine := limitsSummary(c.l.Policy())
	c.limitsBeat++
	if c.limitsBeat%limitsEvery != 1 && mine == c.limitsMine {
		return nil
	}
	c.limitsBeat, c.limitsMine = 1, mine
	now := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	start := time.Now()
	res := cl.DoMulti(ctx, cl.B().Hset().Key(c.k.limits).FieldValue().FieldValue(c.o.Node, strconv.FormatInt(now.UnixMilli(), 10)+" "+mine).Build(),
		cl.B().Hgetall().Key(c.k.limits).Build())
	m, err := res[1].AsStrMap()
	if err == nil {
		err = res[0].Error()
	}
	c.m.observe("limits", time.Since(start), err)
	if err != nil {
		return err
	}
	stale := now.Add(-3 * limitsEvery * c.beatInterval()).UnixMilli()
	var differ []string
	var gone []string
	for node, v := range m {
		if node == c.o.Node {
			continue
		}
		at, summary, _ := strings.Cut(v, " ")
		if ms, err := strconv.ParseInt(at, 10, 64); err != nil || ms < stale {
			gone = append(gone, node)
			continue
		}
		if d := limitsDiff(mine, summary); len(d) > 0 {
			differ = append(differ, "node "+node+": "+strings.Join(d, ", "))
		}
	}
	if len(gone) > 0 {
		cl.Do(ctx, cl.B().Hdel().Key(c.k.limits).Field(gone...).Build())
	}
	slices.Sort(differ)
	text := strings.Join(differ, "; ")
	if text != c.limitsLogged {
		switch {
		case text != "":
			c.o.Log("imapgate: cluster: warning: other nodes apply other limits to the shared counts (" + text +
				"): each node checks them against its own [limits], so keep [limits] and the access file the same on every replica")
		case c.limitsLogged != "":
			c.o.Log("imapgate: cluster: every node's limits agree again")
		}
		c.limitsLogged = text
	}
	c.limitsDiffer.Store(&differ)
	return nil
}
