package cluster

import "strings"

// keys names the Redis keys, all under one hash tag.
type keys struct {
	p                                   string // "{prefix}:"
	nodes, inst, total, bans, bansVer   string
	channel, secret, tickets, ticketsLk string
	good, goodVer, limits, lifted       string
}

func newKeys(prefix string) keys {
	p := "{" + prefix + "}:"
	return keys{p: p, nodes: p + "nodes", inst: p + "inst", total: p + "c:t", bans: p + "bans", bansVer: p + "bans:v",
		channel: p + "ev", secret: p + "secret", tickets: p + "tk", ticketsLk: p + "tk:lease",
		good: p + "good", goodVer: p + "good:v", limits: p + "limits", lifted: p + "lifted"}
}

func (k keys) nodeSet(node string) string { return k.p + "n:" + node }

// none is a key no script writes, for arguments a call does not use.
func (k keys) none() string { return k.p + "none" }

func (c *Cluster) userTag(user string) string {
	s := c.secret.Load()
	if s == nil {
		return ""
	}
	return userHash(*s, strings.ToLower(user))
}
