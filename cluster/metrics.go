package cluster

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	calls     *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	fallbacks prometheus.Counter
	rotations prometheus.Counter
	c         *Cluster
}

var ops = []string{"admit", "release", "login", "succeeded", "failure", "ban", "unban", "publish", "heartbeat", "holder", "sweep", "leave", "tickets", "good", "limits"}

func newMetrics(c *Cluster) *metrics {
	m := &metrics{c: c,
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "imapgate_cluster_redis_seconds",
			Help:    "Redis calls of the cluster, by operation (admit, release, login, …): the time to the answer.",
			Buckets: []float64{50e-6, 100e-6, 150e-6, 200e-6, 250e-6, 300e-6, 400e-6, 500e-6, 750e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 100e-3}}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imapgate_cluster_redis_errors_total",
			Help: "Redis calls of the cluster that failed or passed their deadline, by operation."}, []string{"op"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_cluster_fallbacks_total",
			Help: "Switches from the shared limits to local limits because Redis was unreachable or slow."}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_cluster_ticket_key_rotations_total",
			Help: "TLS session ticket key rotations this node made (holding the lease)."}),
	}
	for _, op := range ops {
		m.calls.WithLabelValues(op)
		m.errors.WithLabelValues(op)
	}
	return m
}

func (m *metrics) observe(op string, d time.Duration, err error) {
	if err != nil && !isNil(err) {
		m.errors.WithLabelValues(op).Inc()
		return
	}
	m.calls.WithLabelValues(op).Observe(d.Seconds())
}

// Register adds the cluster's metrics to reg: the Redis calls' latency and
// errors, fallbacks, ticket key rotations, and gauges read at scrape time:
// imapgate_cluster_degraded, imapgate_cluster_nodes_alive (not while
// degraded) and
// imapgate_cluster_local_cache_hits_total (refusals answered without a
// round trip from remembered shared refusals).
func (c *Cluster) Register(reg prometheus.Registerer) {
	m := c.m
	reg.MustRegister(m.calls, m.errors, m.fallbacks, m.rotations,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imapgate_cluster_degraded",
			Help: "1 while this node applies local limits because Redis is unreachable or slow."}, func() float64 {
			if c.Degraded() {
				return 1
			}
			return 0
		}),
		nodesAlive{c},
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "imapgate_cluster_local_cache_hits_total",
			Help: "Refusals answered from this node's memory of a shared refusal (over limit until T), without a Redis call."}, func() float64 {
			if c.l == nil {
				return 0
			}
			hits, _, _ := c.l.SharedStats()
			return float64(hits)
		}),
	)
}

var descNodesAlive = prometheus.NewDesc("imapgate_cluster_nodes_alive",
	"Nodes whose liveness was current at this node's last heartbeat; absent while this node is degraded, when it cannot know.", nil, nil)

// nodesAlive exports imapgate_cluster_nodes_alive only while the node
// hears Redis: a degraded node's last count would stay frozen at what it
// was before the outage.
type nodesAlive struct{ c *Cluster }

func (n nodesAlive) Describe(ch chan<- *prometheus.Desc) { ch <- descNodesAlive }

func (n nodesAlive) Collect(ch chan<- prometheus.Metric) {
	if !n.c.Degraded() {
		ch <- prometheus.MustNewConstMetric(descNodesAlive, prometheus.GaugeValue, float64(n.c.alive.Load()))
	}
}

// Degraded reports whether the node applies local limits now.
func (c *Cluster) Degraded() bool { return c.l == nil || !c.l.SharedUp() }
