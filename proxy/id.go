package proxy

import (
	"bytes"
	"strconv"
)

// What the upstream is told about the client comes from imapgate, never
// from the client. Dovecot believes the ID fields x-originating-ip,
// x-originating-port, x-connected-ip, x-connected-port, x-session-id (and
// x-proxy-ttl, x-forward-*) from hosts in its login_trusted_networks, which
// is where imapgate sits: a client's own x-* fields passed through would
// let it choose the address Dovecot logs, penalises and counts against
// mail_max_userip_connections. So a client's x-* fields are dropped, and
// imapgate sends its own before LOGIN, as Dovecot's own proxy does.

// RFC 2971 §3.3 bounds: 30 field-value pairs, fields of 30 octets, values
// of 1024 octets.
const (
	maxIDPairs    = 30
	maxIDFieldLen = 30
	maxIDValueLen = 1024
)

// idPair is one field and value of an ID parameter list; a nil value is NIL.
type idPair struct {
	field, value []byte
}

// parseIDParams parses the argument of "ID" (RFC 2971 §3.3): NIL or a
// parenthesised list of string pairs. It reports false for anything else.
func parseIDParams(args []token) ([]idPair, bool) {
	if len(args) != 1 {
		return nil, false
	}
	t := args[0]
	if t.kind == tokAtom {
		return nil, bytes.EqualFold(t.val, []byte("NIL"))
	}
	if t.kind != tokList {
		return nil, false
	}
	b := t.val // "(" ... ")"
	var items []token
	for p := 1; p < len(b)-1; {
		if len(items) > 0 {
			if b[p] != ' ' {
				return nil, false
			}
			p++
		}
		it, next, err := parseToken(b, p, maxListDepth)
		if err != nil || it.kind == tokList {
			return nil, false
		}
		items = append(items, it)
		p = next
	}
	if len(items)%2 != 0 {
		return nil, false
	}
	pairs := make([]idPair, 0, len(items)/2)
	for i := 0; i < len(items); i += 2 {
		f, v := items[i], items[i+1]
		if f.kind != tokString {
			return nil, false
		}
		pair := idPair{field: f.val}
		if v.kind == tokString {
			pair.value = v.val
			if pair.value == nil {
				pair.value = []byte{}
			}
		} else if !bytes.EqualFold(v.val, []byte("NIL")) {
			return nil, false
		}
		pairs = append(pairs, pair)
	}
	return pairs, true
}

// isForwardField reports whether an ID field is one of the x-* fields an
// upstream may believe from a trusted proxy (Dovecot: x-originating-ip,
// x-connected-ip, x-session-id, x-proxy-ttl, x-forward-*, …).
func isForwardField(f []byte) bool {
	return len(f) >= 2 && (f[0]|0x20) == 'x' && f[1] == '-'
}

// sanitizeID keeps the client's fields that are not x-* and that fit RFC
// 2971's bounds (in order, at most maxIDPairs less room for imapgate's).
func sanitizeID(pairs []idPair, room int) []idPair {
	out := pairs[:0]
	for _, p := range pairs {
		if len(out) >= maxIDPairs-room {
			break
		}
		if isForwardField(p.field) || len(p.field) > maxIDFieldLen || len(p.value) > maxIDValueLen ||
			!quotable(p.field) || (p.value != nil && !quotable(p.value)) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// forwardFields are what imapgate itself knows of the client: its address
// and port, the address and port it connected to, and the connection's id
// (as `imapgate ctl conns` shows it).
func (lp *loginPhase) forwardFields() []idPair {
	c := lp.c.client
	return []idPair{
		{[]byte("x-originating-ip"), []byte(c.Remote.Addr().Unmap().String())},
		{[]byte("x-originating-port"), strconv.AppendUint(nil, uint64(c.Remote.Port()), 10)},
		{[]byte("x-connected-ip"), []byte(c.Local.Addr().Unmap().String())},
		{[]byte("x-connected-port"), strconv.AppendUint(nil, uint64(c.Local.Port()), 10)},
		{[]byte("x-session-id"), strconv.AppendUint(nil, lp.c.entry.ID(), 10)},
	}
}

// appendIDCommand appends "tag ID (pairs...)\r\n" (or "tag ID NIL") to b.
// Every field and value is quotable (sanitizeID and forwardFields see to
// it).
func appendIDCommand(b []byte, tag string, pairs []idPair) []byte {
	b = append(b, tag...)
	b = append(b, " ID "...)
	if len(pairs) == 0 {
		return append(b, "NIL\r\n"...)
	}
	b = append(b, '(')
	for i, p := range pairs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = appendQuoted(b, p.field)
		b = append(b, ' ')
		if p.value == nil {
			b = append(b, "NIL"...)
		} else {
			b = appendQuoted(b, p.value)
		}
	}
	return append(b, ")\r\n"...)
}

func appendQuoted(b, s []byte) []byte {
	b = append(b, '"')
	for _, c := range s {
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}

// clientID handles the client's ID for an upstream that speaks ID: the
// command is read whole, its x-* fields dropped, imapgate's own added
// (unless upstream.send_id is off), and the result forwarded; the
// upstream's answer goes back to the client.
func (lp *loginPhase) clientID(tag string) outcome {
	if o := lp.readCommand(); o != carryOn {
		return o
	}
	_, _, args, err := parseArgs(lp.cmd)
	var pairs []idPair
	ok := false
	if err == nil {
		pairs, ok = parseIDParams(args)
	}
	if err != nil || !ok {
		return lp.invalid(tag, "Invalid ID command.")
	}
	var own []idPair
	if !lp.set.Login.NoUpstreamID {
		own = lp.forwardFields()
	}
	pairs = append(sanitizeID(pairs, len(own)), own...)
	lp.out = appendIDCommand(lp.out[:0], tag, pairs)
	if _, err := lp.c.up.Write(lp.out); err != nil {
		return closed
	}
	lp.idSent = lp.idSent || own != nil
	_, last, err := lp.relayResponses(tag, continueRelay)
	if err != nil {
		return closed
	}
	return onlyIf(lp.c.writeClient(last))
}

// idTag tags the ID imapgate sends on its own; its answers are not the
// client's and are not relayed.
const idTag = "imapgate-id"

// sendOwnID sends imapgate's ID right after the greeting when its
// capabilities list ID, else before the first LOGIN or AUTHENTICATE once
// a CAPABILITY answer has listed it, unless it went already or
// upstream.send_id is off. The upstream's answers are read and dropped. It
// reports whether the session may go on.
func (lp *loginPhase) sendOwnID() bool {
	if lp.idSent || !lp.upID || lp.set.Login.NoUpstreamID {
		return true
	}
	lp.idSent = true
	lp.out = appendIDCommand(lp.out[:0], idTag, lp.forwardFields())
	if _, err := lp.c.up.Write(lp.out); err != nil {
		return false
	}
	for {
		kind, _, err := lp.readUpstreamResponseQuiet(idTag)
		if err != nil {
			return false
		}
		if kind == respTagged {
			return true
		}
	}
}
