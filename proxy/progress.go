package proxy

import (
	"net"

	"imapgate/conntable"
)

// progressConn tells the entry of every byte read from or written to the
// client, and of when imapgate waits for the client: a handshake or login
// that is moving, or waiting on imapgate, is neither silent nor stalled
// (conntable's early drop). Until the handshake is done it follows the TLS
// record framing of what the client sends: only a complete record is
// progress, so half a ClientHello followed by nothing leaves the entry
// silent. Only the goroutine reading the client touches the framing.
type progressConn struct {
	net.Conn
	entry *conntable.Entry
	frame recordFrame
	done  bool // handshake over: every byte is progress
}

func (c *progressConn) Read(p []byte) (int, error) {
	c.entry.Waiting()
	n, err := c.Conn.Read(p)
	c.entry.Progress(n, c.done || c.frame.feed(p[:n]))
	return n, err
}

func (c *progressConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.entry.Touch()
	}
	return n, err
}

// recordFrame follows TLS record boundaries (RFC 8446 §5.1: a 5-byte
// header whose last two bytes are the length, then that many bytes).
type recordFrame struct {
	hdr  [5]byte
	nhdr int // header bytes seen of the current record
	left int // body bytes still to come
}

// feed consumes b and reports whether it completed at least one record.
func (f *recordFrame) feed(b []byte) (completed bool) {
	for len(b) > 0 {
		if f.nhdr < len(f.hdr) {
			k := copy(f.hdr[f.nhdr:], b)
			f.nhdr += k
			b = b[k:]
			if f.nhdr < len(f.hdr) {
				return completed
			}
			f.left = int(f.hdr[3])<<8 | int(f.hdr[4])
		}
		k := min(f.left, len(b))
		f.left -= k
		b = b[k:]
		if f.left == 0 {
			completed, f.nhdr = true, 0
		}
	}
	return completed
}
