package cluster

// Probe: what imapgate -check asks of Redis, through the client a node
// would use.

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Report is what Probe found: a Redis that answers, and a user with the
// rights imapgate needs.
type Report struct {
	Version string // Redis's version (HELLO)
	// Mode: "standalone at ADDR", "Sentinel master NAME at ADDR" or
	// "Redis Cluster of N masters and M replicas, the keys' slot S on ADDR".
	Mode    string
	User    string        // the ACL user ("default" when the URL names none)
	TLS     bool          // rediss://
	RTT     time.Duration // the median round trip of 5 reads of a key under the prefix
	Timeout time.Duration // cluster.timeout, every call's deadline
	Checked string        // the rights checked, in words
}

// Slow reports a round trip past cluster.timeout: a node's calls would
// be late, and it would run on local limits.
func (r Report) Slow() bool { return r.RTT > r.Timeout }

func (r Report) String() string {
	over := ""
	if r.TLS {
		over = " over TLS"
	}
	return fmt.Sprintf("Redis %s, %s%s, round trip %.2f ms; user %s may %s",
		r.Version, r.Mode, over, float64(r.RTT.Microseconds())/1000, r.User, r.Checked)
}

// Probe connects to Redis as a node with options o would (clientOption:
// the URL's addresses, user and password, TLS, the dial and write
// timeouts, the sentinels' own user) and checks what the node will need,
// changing nothing imapgate keeps:
//
//   - the first address speaks what the URL's scheme says (transport:
//     TLS for rediss://, RESP otherwise; a mismatch is ProbeConfig, found
//     within 2 s, and so is a unix socket this user may not open);
//   - Redis answers: with master_set, a sentinel (the first that
//     answers) knows the master, so that its refusal is told apart from
//     the master's; Redis's version (HELLO) and mode (standalone, the
//     Sentinel master's address, Redis Cluster's masters and replicas
//     and the node holding the keys' slot);
//   - the round trip: the median of 5 GETs of a key under the prefix,
//     which should be well within o.Timeout (Report.Slow);
//   - the ACL user may send every command imapgate sends, itself or
//     from its scripts (probeCommands, on keys {prefix}:check:NODE:…,
//     deleted again), run scripts (EVAL of one that writes and deletes
//     such a key, then EVALSHA of it), and PUBLISH and SUBSCRIBE on the
//     channel {prefix}:ev (messages "check NODE …", which nodes ignore).
//
// Every call has a deadline of 20 × o.Timeout (1 s at least). Errors are
// *ProbeError, sorted by Kind: ProbeUnreachable (a warning: a node starts
// on local limits and recovers), ProbeAuth (WRONGPASS, NOAUTH, from Redis
// or a sentinel), ProbeRights (NOPERM; Missing has every rule to add, not
// only the first) or ProbeConfig. No message quotes a password.
func Probe(ctx context.Context, o Options) (Report, error) {
	if err := o.defaults(); err != nil {
		return Report{}, &ProbeError{Kind: ProbeConfig, msg: err.Error()}
	}
	copt, err := clientOption(o)
	if err != nil { // -check names cluster.redis itself
		return Report{}, &ProbeError{Kind: ProbeConfig, msg: strings.TrimPrefix(err.Error(), "cluster.redis: ")}
	}
	p := &prober{o: o, copt: copt, k: newKeys(o.KeyPrefix), call: max(20*o.Timeout, time.Second),
		user: cmp.Or(copt.Username, "default"), unix: strings.HasPrefix(o.URL, "unix:")}
	r := Report{User: p.user, TLS: copt.TLSConfig != nil, Timeout: o.Timeout}
	if err := p.transport(ctx); err != nil {
		return r, err
	}
	if copt.Sentinel.MasterSet != "" {
		if err := p.sentinels(ctx); err != nil {
			return r, err
		}
	}
	cl, err := rueidis.NewClient(copt)
	if err != nil {
		return r, p.describe(p.redis(), "connecting", err)
	}
	defer cl.Close()
	if err := p.rights(ctx, cl); err != nil {
		return r, err
	}
	r.Checked = fmt.Sprintf("run scripts (EVAL, EVALSHA), send the %d commands imapgate and its scripts send "+
		"on keys %s*, and PUBLISH and SUBSCRIBE on %s", len(probeCommands(cl.B(), p.probeKeys())), p.k.p, p.k.channel)
	if r.RTT, err = p.roundTrip(ctx, cl); err != nil {
		return r, err
	}
	if r.Version, err = p.version(ctx, cl); err != nil {
		return r, err
	}
	r.Mode = p.mode(ctx, cl)
	return r, nil
}

type prober struct {
	o    Options
	copt rueidis.ClientOption
	k    keys
	call time.Duration // each call's deadline
	user string
	unix bool // a unix:// URL: InitAddress[0] is the socket's path
}

// redis names the Redis side of the messages.
func (p *prober) redis() side {
	who := "Redis at " + p.copt.InitAddress[0]
	switch {
	case p.copt.Sentinel.MasterSet != "":
		who = "the master " + p.copt.Sentinel.MasterSet + " (through the sentinels)"
	case len(p.copt.InitAddress) > 1:
		who += fmt.Sprintf(" (and %d more addresses)", len(p.copt.InitAddress)-1)
	}
	return side{who: who, creds: "the URL's user and password"}
}

// do runs one call with the probe's deadline.
func (p *prober) do(ctx context.Context, cl rueidis.Client, cmd rueidis.Completed) rueidis.RedisResult {
	ctx, cancel := context.WithTimeout(ctx, p.call)
	defer cancel()
	return cl.Do(ctx, cmd)
}

// sentinels asks the sentinels, with their own credentials, for the
// master's address, until one answers.
func (p *prober) sentinels(ctx context.Context) error {
	var last error
	for _, addr := range p.copt.InitAddress {
		err := p.askSentinel(ctx, addr)
		var pe *ProbeError
		if err == nil || (errors.As(err, &pe) && pe.Kind != ProbeUnreachable) {
			return err
		}
		last = err
	}
	return last
}

func (p *prober) askSentinel(ctx context.Context, addr string) error {
	s := side{who: "the sentinel at " + addr, creds: "sentinel_username and sentinel_password", sentinel: true}
	so := p.copt.Sentinel
	cl, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, Dialer: so.Dialer,
		TLSConfig: so.TLSConfig, Username: so.Username, Password: so.Password, ForceSingleClient: true,
		DisableCache: true, DisableRetry: true, ClientName: p.copt.ClientName})
	if err != nil {
		return p.notSentinel(ctx, addr, p.describe(s, "connecting", err))
	}
	defer cl.Close()
	a, err := p.do(ctx, cl, cl.B().SentinelGetMasterAddrByName().Master(so.MasterSet).Build()).AsStrSlice()
	switch {
	case rueidis.IsRedisNil(err):
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s knows no master named %q (master_set)", s.who, so.MasterSet)}
	case err != nil:
		return p.notSentinel(ctx, addr, p.describe(s, "SENTINEL GET-MASTER-ADDR-BY-NAME", err))
	case len(a) != 2:
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s answered %q for master %q", s.who, a, so.MasterSet)}
	}
	return nil
}

// notSentinel replaces err, a sentinel's refusal of the sentinel
// credentials (or of the command), when addr is a Redis server rather
// than a sentinel: a URL that names Redis's port where the sentinels'
// belongs (easy with 6379 implied) otherwise reads as a sentinel asking
// for a password. It asks addr's ROLE with the URL's own credentials,
// which a Redis server takes.
func (p *prober) notSentinel(ctx context.Context, addr string, err *ProbeError) error {
	if err.Kind == ProbeUnreachable {
		return err
	}
	cl, cerr := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, Dialer: p.copt.Dialer,
		TLSConfig: p.copt.TLSConfig, Username: p.copt.Username, Password: p.copt.Password, ForceSingleClient: true,
		DisableCache: true, DisableRetry: true, ClientName: p.copt.ClientName})
	if cerr != nil {
		return err
	}
	defer cl.Close()
	role, rerr := p.do(ctx, cl, cl.B().Role().Build()).ToArray()
	if rerr != nil || len(role) == 0 {
		return err
	}
	if r, _ := role[0].ToString(); r == "master" || r == "slave" {
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s is a Redis server (its role: %s), not a sentinel: "+
			"name the sentinels in the URL, with their port (26379 unless their sentinel.conf says otherwise)", addr, r)}
	}
	return err
}

// rights checks every right imapgate needs; all that are missing make
// one ProbeError.
func (p *prober) rights(ctx context.Context, cl rueidis.Client) error {
	var missing []string
	for _, check := range []func(context.Context, rueidis.Client) ([]string, error){p.commands, p.scripts, p.pubsub} {
		m, err := check(ctx, cl)
		if err != nil {
			return err
		}
		missing = append(missing, m...)
	}
	if len(missing) > 0 {
		return missingRights(p.user, missing)
	}
	return nil
}

// judge sorts the answer to one call: fine, a right missing (its rule)
// or a ProbeError.
func (p *prober) judge(doing string, err error) (rule string, _ error) {
	if err == nil || rueidis.IsRedisNil(err) {
		return "", nil
	}
	if kindOf(err) == ProbeRights {
		return aclRule(p.mask(err.Error()), p.k), nil
	}
	return "", p.describe(p.redis(), doing, err)
}

// judgeAll adds the rule of each missing right to rules.
func (p *prober) judgeAll(rules []string, doing string, err error) ([]string, error) {
	rule, err := p.judge(doing, err)
	if rule != "" {
		rules = append(rules, rule)
	}
	return rules, err
}

// probeKeys are the keys the probe writes: a string, a counter, a hash,
// a set and a sorted set, all under the prefix's hash tag.
type probeKeys struct{ s, i, h, t, z string }

func (p *prober) probeKeys() probeKeys {
	b := p.k.p + "check:" + p.o.Node + ":"
	return probeKeys{b + "s", b + "i", b + "h", b + "t", b + "z"}
}

type namedCmd struct {
	name string
	cmd  rueidis.Completed
}

// probeCommands are the commands imapgate sends (directly, or from its
// scripts, where the same ACL applies) but for EVAL, EVALSHA, PUBLISH
// and SUBSCRIBE, each once on k, in an order that leaves nothing behind
// (TestProbeCoversEveryCommand keeps the list whole).
func probeCommands(b rueidis.Builder, k probeKeys) []namedCmd {
	return []namedCmd{
		{"set", b.Set().Key(k.s).Value("1").Nx().PxMilliseconds(60000).Build()},
		{"get", b.Get().Key(k.s).Build()},
		{"exists", b.Exists().Key(k.s).Build()},
		{"pexpire", b.Pexpire().Key(k.s).Milliseconds(60000).Build()},
		{"incr", b.Incr().Key(k.i).Build()},
		{"hset", b.Hset().Key(k.h).FieldValue().FieldValue("f", "1").Build()},
		{"hincrby", b.Hincrby().Key(k.h).Field("f").Increment(1).Build()},
		{"hget", b.Hget().Key(k.h).Field("f").Build()},
		{"hmget", b.Hmget().Key(k.h).Field("f").Build()},
		{"hgetall", b.Hgetall().Key(k.h).Build()},
		{"hkeys", b.Hkeys().Key(k.h).Build()},
		{"hexists", b.Hexists().Key(k.h).Field("f").Build()},
		{"hdel", b.Hdel().Key(k.h).Field("f").Build()},
		{"sadd", b.Sadd().Key(k.t).Member("m", "n").Build()},
		{"scard", b.Scard().Key(k.t).Build()},
		{"smembers", b.Smembers().Key(k.t).Build()},
		{"srem", b.Srem().Key(k.t).Member("m").Build()},
		{"spop", b.Spop().Key(k.t).Count(500).Build()},
		{"zadd", b.Zadd().Key(k.z).ScoreMember().ScoreMember(1, "m").Build()},
		{"zscore", b.Zscore().Key(k.z).Member("m").Build()},
		{"zcount", b.Zcount().Key(k.z).Min("-inf").Max("+inf").Build()},
		{"zrangebyscore", b.Zrangebyscore().Key(k.z).Min("-inf").Max("+inf").Build()},
		{"zrange", b.Zrange().Key(k.z).Min("0").Max("-1").Withscores().Build()},
		{"zrem", b.Zrem().Key(k.z).Member("m").Build()},
		{"time", b.Time().Build()},
		{"del", b.Del().Key(k.s, k.i, k.h, k.t, k.z).Build()},
	}
}

// commands sends probeCommands in one pipeline.
func (p *prober) commands(ctx context.Context, cl rueidis.Client) ([]string, error) {
	cmds := probeCommands(cl.B(), p.probeKeys())
	all := make(rueidis.Commands, len(cmds))
	for i, c := range cmds {
		all[i] = c.cmd
	}
	ctx, cancel := context.WithTimeout(ctx, p.call)
	defer cancel()
	var rules []string
	for i, res := range cl.DoMulti(ctx, all...) {
		var err error
		if rules, err = p.judgeAll(rules, strings.ToUpper(cmds[i].name), res.Error()); err != nil {
			return nil, err
		}
	}
	return rules, nil
}

// probeScript writes a key and deletes it again.
const probeScript = "redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return redis.call('DEL', KEYS[1])"

// scripts runs probeScript by EVAL (how a script reaches a Redis that
// lacks it), then by EVALSHA (how imapgate runs its scripts). NOSCRIPT
// from EVALSHA means it may run (EVAL was refused).
func (p *prober) scripts(ctx context.Context, cl rueidis.Client) ([]string, error) {
	key := p.probeKeys().s
	sum := sha1.Sum([]byte(probeScript))
	rules, err := p.judgeAll(nil, "EVAL", p.do(ctx, cl, cl.B().Eval().Script(probeScript).Numkeys(1).Key(key).Arg("1").Build()).Error())
	if err != nil {
		return nil, err
	}
	err = p.do(ctx, cl, cl.B().Evalsha().Sha1(hex.EncodeToString(sum[:])).Numkeys(1).Key(key).Arg("1").Build()).Error()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		err = nil
	}
	return p.judgeAll(rules, "EVALSHA", err)
}

// pubsub subscribes to the channel and publishes on it until its own
// message comes back.
func (p *prober) pubsub(ctx context.Context, cl rueidis.Client) ([]string, error) {
	nonce := make([]byte, 4)
	rand.Read(nonce)
	msg := "check " + p.o.Node + " " + hex.EncodeToString(nonce)
	ctx, cancel := context.WithTimeout(ctx, p.call)
	defer cancel()
	got, sub := make(chan struct{}), make(chan error, 1)
	var once sync.Once
	go func() {
		sub <- cl.Receive(ctx, cl.B().Subscribe().Channel(p.k.channel).Build(), func(m rueidis.PubSubMessage) {
			if m.Message == msg {
				once.Do(func() { close(got) })
			}
		})
	}()
	defer func() { cancel(); <-sub }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cl.Do(ctx, cl.B().Publish().Channel(p.k.channel).Message(msg).Build()).Error()
		if rules, err := p.judgeAll(nil, "PUBLISH", err); err != nil || len(rules) > 0 {
			return rules, err
		}
		select {
		case <-got:
			return nil, nil
		case err := <-sub:
			sub <- err // for the deferred wait
			if ctx.Err() != nil {
				return nil, p.describe(p.redis(), "SUBSCRIBE", fmt.Errorf("no message came back on %s within %s", p.k.channel, p.call))
			}
			return p.judgeAll(nil, "SUBSCRIBE", cmp.Or(err, errors.New("subscription ended")))
		case <-tick.C:
		}
	}
}

// roundTrip is the median of 5 reads of a key under the prefix.
func (p *prober) roundTrip(ctx context.Context, cl rueidis.Client) (time.Duration, error) {
	rtts := make([]time.Duration, 5)
	for i := range rtts {
		start := time.Now()
		if err := p.do(ctx, cl, cl.B().Get().Key(p.k.none()).Build()).Error(); err != nil && !rueidis.IsRedisNil(err) {
			return 0, p.describe(p.redis(), "GET", err)
		}
		rtts[i] = time.Since(start)
	}
	slices.Sort(rtts)
	return rtts[2], nil
}

// version asks Redis its version (HELLO, which every client sends).
func (p *prober) version(ctx context.Context, cl rueidis.Client) (string, error) {
	m, err := p.do(ctx, cl, cl.B().Hello().Protover(3).Build()).AsStrMap()
	if err != nil {
		return "", p.describe(p.redis(), "HELLO", err)
	}
	return m["version"], nil
}

// mode says which Redis answered, as far as the ACL lets it tell.
func (p *prober) mode(ctx context.Context, cl rueidis.Client) string {
	var addrs []string
	for a := range cl.Nodes() {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	switch cl.Mode() {
	case rueidis.ClientModeSentinel:
		return fmt.Sprintf("Sentinel master %s at %s", p.copt.Sentinel.MasterSet, strings.Join(addrs, ", "))
	case rueidis.ClientModeCluster:
		return p.clusterMode(ctx, cl, len(addrs))
	}
	return "standalone at " + strings.Join(addrs, ", ")
}

func (p *prober) clusterMode(ctx context.Context, cl rueidis.Client, nodes int) string {
	slot, err := p.do(ctx, cl, cl.B().ClusterKeyslot().Key(p.k.nodes).Build()).AsInt64()
	if err != nil {
		return fmt.Sprintf("Redis Cluster (%d nodes known)", nodes)
	}
	text, err := p.do(ctx, cl, cl.B().ClusterNodes().Build()).ToString()
	if err != nil {
		return fmt.Sprintf("Redis Cluster (%d nodes known), the keys' slot %d", nodes, slot)
	}
	t := parseClusterNodes(text, int(slot))
	return fmt.Sprintf("Redis Cluster of %d masters and %d replicas, the keys' slot %d on %s", t.masters, t.replicas, slot, t.owner)
}

// clusterTopology is what CLUSTER NODES says: masters (not failed),
// replicas, and the address of the master serving one slot.
type clusterTopology struct {
	masters, replicas int
	owner             string
}

// parseClusterNodes counts the working masters and replicas of CLUSTER
// NODES and finds slot's master.
func parseClusterNodes(text string, slot int) clusterTopology {
	var t clusterTopology
	for _, n := range ParseClusterNodes(text) {
		switch {
		case n.Has("fail") || n.Has("noaddr"):
		case n.Has("slave"):
			t.replicas++
		case n.Has("master"):
			t.masters++
			if n.Serves(slot) {
				t.owner = n.Addr
			}
		}
	}
	t.owner = cmp.Or(t.owner, "no node")
	return t
}

// ClusterNode is one node of Redis Cluster as CLUSTER NODES lists it.
type ClusterNode struct {
	ID     string
	Addr   string   // host:port, the bus port and host name cut off
	Flags  []string // myself, master, slave, fail, noaddr, …
	Master string   // a replica's master's ID; "-" for a master
	Slots  [][2]int // ranges served, inclusive
}

// Has reports whether n carries flag.
func (n ClusterNode) Has(flag string) bool { return slices.Contains(n.Flags, flag) }

// Serves reports whether slot is in one of n's ranges.
func (n ClusterNode) Serves(slot int) bool {
	for _, r := range n.Slots {
		if r[0] <= slot && slot <= r[1] {
			return true
		}
	}
	return false
}

// ParseClusterNodes reads CLUSTER NODES: one node a line, "ID
// ADDR@BUSPORT[,HOSTNAME] FLAGS MASTER PING PONG EPOCH LINK SLOT…", a slot
// "N", "N-M" or "[N->-ID]" (migrating, skipped). Lines too short to be a
// node are skipped.
func ParseClusterNodes(text string) []ClusterNode {
	var nodes []ClusterNode
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(l)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := ClusterNode{ID: f[0], Addr: addr, Flags: strings.Split(f[2], ","), Master: f[3]}
		for _, r := range f[8:] {
			var lo, hi int
			if k, _ := fmt.Sscanf(r, "%d-%d", &lo, &hi); k == 1 {
				hi = lo
			} else if k == 0 {
				continue
			}
			n.Slots = append(n.Slots, [2]int{lo, hi})
		}
		nodes = append(nodes, n)
	}
	return nodes
}
