package cluster

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Status is the cluster as one node sees it, for /status and ctl status.
type Status struct {
	Node  string `json:"node"`
	Redis string `json:"redis"` // the URL without its password
	// Master: with Sentinel, the master this node talks to now.
	Master string `json:"master,omitempty"`
	// NodeTTL is how long a node's share counts after its last heartbeat,
	// and Heartbeat how often a live node renews it.
	NodeTTL   time.Duration `json:"node_ttl_ns"`
	Heartbeat time.Duration `json:"heartbeat_ns"`
	// Degraded: this node applies local limits (Redis unreachable or slow).
	Degraded      bool      `json:"degraded"`
	DegradedSince time.Time `json:"degraded_since,omitzero"`
	// RedisLatency is the last heartbeat's round trip.
	RedisLatency time.Duration `json:"redis_latency_ns"`
	Nodes        []NodeStatus  `json:"nodes,omitempty"`
	// LimitsDiffer lists the live nodes whose limits differ from this
	// node's, and how (checkLimits).
	LimitsDiffer []string `json:"limits_differ,omitempty"`
	// Calls and Failures count this node's limiter calls to Redis
	// (admissions, logins, failures, releases, bans; not the heartbeats);
	// CacheHits the refusals answered from its over-limit memory.
	Calls     uint64 `json:"calls"`
	Failures  uint64 `json:"failures"`
	CacheHits uint64 `json:"cache_hits"`
	Error     string `json:"error,omitempty"`
}

// NodeStatus is one node: alive (its liveness is current) and its
// sessions counted in the shared total. A node alive but silent (no
// heartbeat for several intervals: killed, or cut off from Redis) still
// counts until Expires runs out.
type NodeStatus struct {
	Node     string        `json:"node"`
	Alive    bool          `json:"alive"`
	Expires  time.Duration `json:"expires_in_ns"` // negative: dead that long
	Sessions int           `json:"sessions"`
}

// Status reads the nodes and their shares from Redis (one round trip,
// with the call deadline).
func (c *Cluster) Status(ctx context.Context) *Status {
	s := &Status{Node: c.o.Node, Redis: c.Redacted(), Degraded: c.Degraded(), RedisLatency: time.Duration(c.rtt.Load()),
		NodeTTL: c.o.NodeTTL, Heartbeat: c.beatInterval()}
	if ds := c.degradedSince.Load(); ds != 0 && s.Degraded {
		s.DegradedSince = time.Unix(0, ds)
	}
	if c.l != nil {
		s.CacheHits, s.Calls, s.Failures = c.l.SharedStats()
	}
	if d := c.limitsDiffer.Load(); d != nil {
		s.LimitsDiffer = *d
	}
	// While the node cannot join, why (the log said it once), unless the
	// call below failed for the same reason.
	if why := c.joinErr.Load(); why != nil && s.Degraded {
		defer func() {
			switch {
			case s.Error == "":
				s.Error = *why
			case !strings.Contains(s.Error, *why) && !strings.Contains(*why, strings.TrimPrefix(s.Error, "redis TIME: ")):
				s.Error += "; " + *why
			}
		}()
	}
	cl, err := c.conn()
	if err != nil {
		s.Error = c.mask(err)
		return s
	}
	if cl.Mode() == rueidis.ClientModeSentinel {
		for a := range cl.Nodes() {
			s.Master = a
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	res := cl.DoMulti(ctx, cl.B().Time().Build(), cl.B().Zrange().Key(c.k.nodes).Min("0").Max("-1").Withscores().Build(),
		cl.B().Hgetall().Key(c.k.total).Build())
	tm, err := res[0].AsStrSlice()
	if err != nil || len(tm) != 2 {
		s.Error = "redis TIME: " + c.errString(err)
		return s
	}
	secs, _ := strconv.ParseInt(tm[0], 10, 64)
	usec, _ := strconv.ParseInt(tm[1], 10, 64)
	nowMs := secs*1000 + usec/1000
	nodes, err := res[1].AsZScores()
	if err != nil {
		s.Error = c.mask(err)
		return s
	}
	totals, _ := res[2].AsIntMap()
	for _, n := range nodes {
		exp := time.Duration(int64(n.Score)-nowMs) * time.Millisecond
		s.Nodes = append(s.Nodes, NodeStatus{Node: n.Member, Alive: exp >= 0, Expires: exp, Sessions: int(totals[n.Member])})
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Node < s.Nodes[j].Node })
	return s
}

func (c *Cluster) errString(err error) string {
	if err == nil {
		return "short answer"
	}
	return c.mask(err)
}
