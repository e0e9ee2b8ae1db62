// Package courierlog writes log lines in the exact shape courier-imap's
// programs write them after courierlogger has handed them to syslog, so that
// the tools admins already run on courier's logs (fail2ban's courier-auth
// filter, log summarisers) read imapgate's lines unchanged.
//
// A line has a syslog priority (courierlogger maps courier's "INFO:",
// "DEBUG:", "ALERT:" … prefixes to priorities and strips them) and a message.
// Sinks decide how a line is framed: a syslog datagram, or a line in syslog
// file format ("Mmm dd hh:mm:ss host tag: message").
package courierlog

import (
	"net/netip"
	"strconv"
)

// Priority is a syslog severity, as courierlogger maps courier's prefixes.
type Priority uint8

// Syslog severities (RFC 5424 numbering).
const (
	Crit    Priority = 2
	Alert   Priority = 1
	Err     Priority = 3
	Warning Priority = 4
	Info    Priority = 6
	Debug   Priority = 7
)

// String returns the severity name rsyslog uses (mail.info, mail.debug …).
func (p Priority) String() string {
	switch p {
	case Alert:
		return "alert"
	case Crit:
		return "crit"
	case Err:
		return "err"
	case Warning:
		return "warning"
	case Debug:
		return "debug"
	default:
		return "info"
	}
}

// Sink receives finished lines. Implementations must be safe for concurrent
// use and must not retain msg after Write returns.
type Sink interface {
	Write(p Priority, msg []byte)
}

// Discard drops every line.
var Discard Sink = discard{}

type discard struct{}

func (discard) Write(Priority, []byte) {}

// Addr formats a client address as couriertcpd does: IPv4 as an
// IPv4-mapped IPv6 address (::ffff:a.b.c.d), IPv6 compressed.
func Addr(a netip.Addr) string {
	return string(AppendAddr(nil, a))
}

// AppendAddr appends the courier form of a to b.
func AppendAddr(b []byte, a netip.Addr) []byte {
	a = a.WithZone("")
	if a.Is4() {
		b = append(b, "::ffff:"...)
		return a.AppendTo(b)
	}
	return a.AppendTo(b)
}

// maxUser bounds a user name in a line: courier caps the formatted message
// at 1023 bytes and courierlogger cuts lines at 511, so a longer name could
// push ip=[…] off the end of the line.
const maxUser = 256

// AppendUser appends a user name sanitised as courier's courier_safe_printf
// does (every byte outside printable ASCII becomes '.'), and additionally
// replaces ',', '[' and ']': courier leaves those alone, which lets a user
// name such as "x], ip=[10.9.9.9" forge an address field that log parsers
// (fail2ban's courier-auth filter) then read. With them replaced the line
// keeps exactly one ip=[…] field, the real one.
func AppendUser(b []byte, user string) []byte {
	if len(user) > maxUser {
		user = user[:maxUser]
	}
	for i := 0; i < len(user); i++ {
		c := user[i]
		if c < 0x20 || c > 0x7e || c == ',' || c == '[' || c == ']' {
			c = '.'
		}
		b = append(b, c)
	}
	return b
}

// IPPort is "ip=[…], port=[…]" for ap, as courier's session lines end:
// for imapgate's own lines about a session.
func IPPort(ap netip.AddrPort) string { return string(appendIPPort(nil, ap)) }

// appendIPPort appends "ip=[…], port=[…]".
func appendIPPort(b []byte, ap netip.AddrPort) []byte {
	b = append(b, "ip=["...)
	b = AppendAddr(b, ap.Addr())
	b = append(b, "], port=["...)
	b = strconv.AppendUint(b, uint64(ap.Port()), 10)
	return append(b, ']')
}

func appendUint(b []byte, key string, v uint64) []byte {
	b = append(b, ", "...)
	b = append(b, key...)
	b = append(b, '=')
	return strconv.AppendUint(b, v, 10)
}
