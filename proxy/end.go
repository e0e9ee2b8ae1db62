package proxy

import (
	"net"
	"time"

	"imapgate/conntable"
)

// endPreauth closes a session that ended before login.
func (c *conn) endPreauth() {
	switch c.entry.Killed() {
	case conntable.Timeout:
		c.finalWrite("* BYE Disconnected for inactivity.\r\n")
	case conntable.EarlyDrop:
		c.finalWrite("* BYE [UNAVAILABLE] Server busy, please try again later.\r\n")
	case conntable.Deleted:
		c.finalWrite("* BYE Connection closed by the administrator.\r\n")
	case conntable.Shutdown:
		c.finalWrite("* BYE Server shutting down.\r\n")
		c.srv.log.ShutdownPreauth(c.client.Remote, time.Since(c.start))
		c.closed()
		return
	}
	c.srv.log.Disconnected(c.client.Remote, time.Since(c.start))
	c.closed()
}

// closed ends a session that reached TLS: close_notify, then FIN, then a
// short drain of what the client still sends, before cleanup closes the
// socket. Closing a socket with unread input makes the kernel send RST,
// and a client's kernel discards what it had not yet read when the RST
// arrives: the last "* BYE" that says why would be lost. A killed
// session (timeout, early drop, shutdown, administrator) is not drained.
func (c *conn) closed() {
	c.srv.events.Closed()
	c.raw.SetWriteDeadline(time.Now().Add(lingerTime))
	if !c.writeFailed.Load() {
		c.tc.CloseWrite() // close_notify
	}
	if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else if pc, ok := c.raw.(interface{ Raw() net.Conn }); ok { // a PROXY-protocol conn
		closeWrite(pc.Raw())
	}
	if c.entry.Killed() == conntable.NotKilled {
		c.drain()
	}
}

// lingerTime and lingerBytes bound the drain of a closing session: a
// client that read our last line closes at once; one that keeps sending
// is cut off with a reset after this.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// drain reads and discards the client's input until it closes, for at most
// lingerTime and lingerBytes.
func (c *conn) drain() {
	c.mu.Lock()
	if c.killed {
		c.mu.Unlock()
		return
	}
	c.raw.SetReadDeadline(time.Now().Add(lingerTime))
	c.mu.Unlock()
	bp := bigPool.Get().(*[]byte)
	defer bigPool.Put(bp)
	for total := 0; total < lingerBytes; {
		n, err := c.raw.Read(*bp)
		total += n
		if err != nil {
			return
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
