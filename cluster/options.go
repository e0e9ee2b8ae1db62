package cluster

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"imapgate/certs"
	"imapgate/config"
)

// Options configure a cluster node.
type Options struct {
	// URL names Redis (see ParseURL): redis://[user:password@]host:port[/db],
	// rediss://… for TLS; a Redis Cluster by any of its nodes, more with
	// addr=host:port; Sentinel by the sentinels' addresses and the
	// master's name: redis://host:26379?addr=host2:26379&master_set=NAME,
	// with sentinel_username and sentinel_password if the sentinels
	// require them; Redis on this host by its unix socket:
	// unix://[user:password@]/path/to/redis.sock.
	URL string
	// Node is this replica's id, unique in the cluster (default: the host
	// name).
	Node string
	// KeyPrefix starts every key and is the keys' hash tag ("imapgate").
	KeyPrefix string
	// Timeout bounds every Redis call (50 ms).
	Timeout time.Duration
	// NodeTTL: a node that stops renewing its liveness stops counting
	// after this long (15 s).
	NodeTTL time.Duration
	// OverLimitHold: how long a refusal by a shared concurrency limit is
	// answered locally, without a round trip (250 ms).
	OverLimitHold time.Duration
	// TLSCAFile verifies a rediss:// server with these CAs instead of
	// the system's.
	TLSCAFile string
	// Log writes an operational line (connected, degraded, recovered).
	Log func(string)
}

func (o *Options) defaults() error {
	if o.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("cluster.node: %w", err)
		}
		o.Node = h
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = "imapgate"
	}
	if o.Timeout <= 0 {
		o.Timeout = 50 * time.Millisecond
	}
	if o.NodeTTL <= 0 {
		o.NodeTTL = 15 * time.Second
	}
	if o.OverLimitHold <= 0 {
		o.OverLimitHold = 250 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = func(string) {}
	}
	return nil
}

// ParseURL checks a cluster.redis URL (config.RedisURLProblem; the query
// keys are config.RedisURLKeys) and turns it into rueidis's options: the
// user and password of the URL are for Redis (the master, under
// Sentinel), the sentinel_* keys for the sentinels. Which of single Redis, Redis Cluster
// or Sentinel: master_set means Sentinel; otherwise rueidis asks the
// first address (CLUSTER SLOTS) and uses its cluster mode if the server
// is a cluster node, a single connection if it is not (several addresses
// then fail: they only make sense for a cluster). Errors name what is
// wrong, never the password.
func ParseURL(s string) (rueidis.ClientOption, error) {
	var copt rueidis.ClientOption
	if msg := config.RedisURLProblem(s); msg != "" {
		return copt, errors.New(msg)
	}
	u, _ := url.Parse(s)
	q := u.Query()
	// rueidis reads the rest (addr, master_set, db); imapgate's own keys
	// are its business.
	sentUser, sentPass := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	u.RawQuery = q.Encode()
	if u.Scheme != "unix" && u.Path == "/" { // no database number: 0 (rueidis would refuse "")
		u.Path = ""
	}
	copt, err := rueidis.ParseURL(u.String())
	if err != nil {
		return copt, errors.New(strings.TrimPrefix(err.Error(), "redis: "))
	}
	copt.Sentinel.Username, copt.Sentinel.Password = sentUser, sentPass
	return copt, nil
}

// RedactURL is a cluster.redis URL without its passwords (the user's and
// sentinel_password), for logs and status.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	if q := u.Query(); q.Has("sentinel_password") {
		q.Set("sentinel_password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// Redacted is the Redis URL without its passwords, for logs and status.
func (c *Cluster) Redacted() string { return RedactURL(c.o.URL) }

// NewClient returns a Redis client made as a node makes its own (o's
// URL, timeouts and TLS; no client-side cache, no retries), for tools
// that measure or probe what a node would meet. Close it after use.
func NewClient(o Options) (rueidis.Client, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	copt, err := clientOption(o)
	if err != nil {
		return nil, err
	}
	return rueidis.NewClient(copt)
}

func clientOption(o Options) (rueidis.ClientOption, error) {
	copt, err := ParseURL(o.URL)
	if err != nil {
		return copt, fmt.Errorf("cluster.redis: %w", err)
	}
	copt.DisableCache = true // no client-side caching: every answer is Redis's now
	// A failure must surface at once, to degrade. This stops only the
	// retries after network errors, LOADING, TRYAGAIN and CLUSTERDOWN:
	// in Redis Cluster, rueidis follows MOVED and ASK whatever it says,
	// and a MOVED (or a lost connection) refreshes its slot map, so no
	// setting is needed to follow a shard's failover
	// (TestRealRedisClusterModeFailover; a call that meets the old master
	// holding writes for the hand-over is late and degrades its node, as
	// any late call does).
	copt.DisableRetry = true
	copt.Dialer.Timeout = max(10*o.Timeout, 500*time.Millisecond)
	copt.ConnWriteTimeout = max(10*o.Timeout, time.Second)
	copt.ClientName = "imapgate-" + o.Node
	if copt.Sentinel.MasterSet != "" {
		copt.Sentinel.Dialer.Timeout = copt.Dialer.Timeout
		copt.Sentinel.TopologyRefreshInterval = time.Second
		copt.Sentinel.TLSConfig = copt.TLSConfig
	}
	if o.TLSCAFile != "" {
		if copt.TLSConfig == nil {
			return copt, errors.New("cluster.tls_ca_file needs a rediss:// URL")
		}
		pool, err := certs.CAPool(o.TLSCAFile)
		if err != nil {
			return copt, fmt.Errorf("cluster.tls_ca_file: %w", err)
		}
		copt.TLSConfig.RootCAs = pool
	}
	return copt, nil
}
