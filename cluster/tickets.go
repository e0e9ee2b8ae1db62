package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// ticketKeys keeps a tls.Config's session ticket keys those of the
// cluster, so a client resumes its TLS session on any replica. Redis holds
// three keys (hash tk): cur encrypts new tickets, prev and next are
// accepted too. One node at a time (the holder of the lease tk:lease)
// rotates them every rotation period: prev ← cur ← next ← a new key. A
// key is "next" on every node for a whole period before any node
// encrypts with it, so no node meets a ticket it cannot read, and a ticket
// stays valid for one to two periods. While Redis is unreachable a node
// keeps the keys it has (and rotates none); if Redis comes back without
// keys, the first node to take the lease stores the keys it holds, due
// for rotation, so the tickets issued meanwhile stay valid.
//
// The keys are secrets: whoever reads them can open the tickets, which
// hold a TLS 1.2 session's master secret (so a recorded TLS 1.2 session
// whose ticket was captured can be decrypted) or a TLS 1.3 resumption
// secret (so a client resuming with it can be deceived). Redis must be
// reachable only through an ACL user with a password, over TLS
// (rediss://) off the local host.
type ticketKeys struct {
	cfg      *tls.Config
	rotation time.Duration
	last     time.Time
	mu       sync.Mutex // have, for installed
	have     [3]string
	kick     chan struct{}
	set      int // times the keys were installed
}

// installed reports whether key is one of the keys in force (tests).
func (t *ticketKeys) installed(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return key != "" && (t.have[0] == key || t.have[1] == key || t.have[2] == key)
}

// ShareTicketKeys makes cfg's session ticket keys the cluster's, rotated
// every rotation. Call it before Start.
func (c *Cluster) ShareTicketKeys(cfg *tls.Config, rotation time.Duration) {
	c.tickets = &ticketKeys{cfg: cfg, rotation: rotation, kick: make(chan struct{}, 1)}
}

func (t *ticketKeys) period() time.Duration { return min(t.rotation/4, 10*time.Second) }

// refresh rotates the keys if due (and this node gets the lease), then
// installs the stored keys if they changed.
func (t *ticketKeys) refresh(ctx context.Context, c *Cluster, force bool) {
	select {
	case <-t.kick:
		force = true
	default:
	}
	if !force && time.Since(t.last) < t.period() {
		return
	}
	cl, err := c.conn()
	if err != nil {
		return
	}
	t.last = time.Now()
	k1, k2 := make([]byte, 32), make([]byte, 32)
	rand.Read(k1)
	rand.Read(k2)
	t.mu.Lock()
	held := t.have // cur, prev, next
	t.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	rotated, err := c.exec(cctx, "tickets", rotateScript, cl, []string{c.k.tickets, c.k.ticketsLk},
		[]string{c.o.Node, strconv.FormatInt(t.rotation.Milliseconds(), 10), strconv.FormatInt(3*t.period().Milliseconds(), 10),
			string(k1), string(k2), held[0], held[1], held[2]}).AsInt64()
	if err != nil {
		return
	}
	if rotated != 0 {
		cl.Do(cctx, cl.B().Publish().Channel(c.k.channel).Message("tk").Build())
	}
	switch rotated {
	case 1:
		c.m.rotations.Inc()
	case 2:
		c.o.Log("imapgate: cluster: Redis had no TLS session ticket keys; stored this node's, due for rotation")
	}
	vals, err := cl.Do(cctx, cl.B().Hmget().Key(c.k.tickets).Field("cur", "prev", "next").Build()).ToArray()
	if err != nil || len(vals) != 3 {
		return
	}
	var have [3]string
	var keys [][32]byte
	for i, v := range vals {
		s, err := v.ToString()
		if err != nil || len(s) != 32 {
			continue
		}
		have[i] = s
		var k [32]byte
		copy(k[:], s)
		keys = append(keys, k)
	}
	t.mu.Lock()
	same := have == t.have
	if !same && have[0] != "" {
		t.have = have
	}
	t.mu.Unlock()
	if same || have[0] == "" {
		return
	}
	t.cfg.SetSessionTicketKeys(keys)
	t.set++
	if t.set == 1 {
		c.o.Log(fmt.Sprintf("imapgate: cluster: TLS session ticket keys shared (%d keys, rotated every %s)", len(keys), t.rotation))
	}
}
