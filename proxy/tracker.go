package proxy

import (
	"bytes"
	"sync"
)

// cmdTracker follows a logged-in session just enough to notice LOGOUT, so
// the end of the session is logged in courier's words. It reads both
// directions without copying them: the client's commands, to find command
// names and skip literal data without looking at it, and the upstream's
// responses, because whether a synchronising literal's data follows is
// the server's decision (RFC 9051 §7.5): the client sends it only after a
// "+" continuation; a tagged answer instead (NO [TOOBIG], say) means it
// never comes. Non-synchronising literals ({n+}, {n-}) follow at once.
//
// Each direction is scanned by the goroutine copying it; they share the
// pending literal, under mu. The client side always scans a command
// before it is written upstream, and the upstream side scans a "+"
// before it is written to the client, so the causal order of the
// exchange is the order the tracker sees.
type cmdTracker struct {
	mu      sync.Mutex
	client  lineScanner
	server  lineScanner
	cmdTag  [maxTrackedTag]byte // tag of the client's current command
	nCmdTag int
	// pending is a synchronising literal the client announced and the
	// upstream has not yet answered: pendingSize > 0 while it waits.
	pendingSize int64
	pendingTag  [maxTrackedTag]byte
	nPendingTag int
	logout      bool
}

// maxTrackedTag bounds the tag remembered to match a tagged answer; a
// longer tag is compared by its first bytes.
const maxTrackedTag = 32

// lineScanner splits one direction's stream into lines and skips literal
// data, keeping only what it needs: the first trackHead bytes of the
// current line and its last bytes (where a literal is announced).
type lineScanner struct {
	skip  int64 // literal bytes still to pass over
	line  []byte
	tail  [24]byte // enough for "{4294967295+}\r\n"
	nTail int
	// cont: the current line continues a command or response after a
	// literal's data, so it does not start with a tag.
	cont bool
}

const trackHead = 64

// scanClient follows bytes the client sent, before they go upstream.
func (t *cmdTracker) scanClient(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.client.scan(b, t.endClientLine)
}

// scanServer follows bytes the upstream sent, before they go to the
// client.
func (t *cmdTracker) scanServer(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.server.scan(b, t.endServerLine)
}

// loggedOut reports whether the client sent LOGOUT.
func (t *cmdTracker) loggedOut() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.logout
}

// scan feeds b through s, calling end at the end of each line with the
// literal the line announced, if any. end returns how many literal bytes
// to skip next.
func (s *lineScanner) scan(b []byte, end func(s *lineScanner, lit literal, has bool) int64) {
	for len(b) > 0 {
		if s.skip > 0 {
			n := min(int64(len(b)), s.skip)
			s.skip -= n
			b = b[n:]
			continue
		}
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i+1]
		}
		if room := trackHead - len(s.line); room > 0 {
			s.line = append(s.line, chunk[:min(room, len(chunk))]...)
		}
		s.keepTail(chunk)
		b = b[len(chunk):]
		if i >= 0 {
			lit, has, err := trailingLiteral(s.tail[:s.nTail])
			has = has && err == nil
			s.skip = end(s, lit, has)
			s.cont = has
			s.line = s.line[:0]
			s.nTail = 0
		}
	}
}

func (s *lineScanner) keepTail(chunk []byte) {
	if len(chunk) >= len(s.tail) {
		copy(s.tail[:], chunk[len(chunk)-len(s.tail):])
		s.nTail = len(s.tail)
		return
	}
	keep := min(s.nTail, len(s.tail)-len(chunk))
	copy(s.tail[:], s.tail[s.nTail-keep:s.nTail])
	copy(s.tail[keep:], chunk)
	s.nTail = keep + len(chunk)
}

// endClientLine: a command (or the rest of one, after a literal) ended.
func (t *cmdTracker) endClientLine(s *lineScanner, lit literal, has bool) int64 {
	if !s.cont {
		if tag, name, err := commandHead(s.line); err == nil {
			t.nCmdTag = copy(t.cmdTag[:], tag)
			if name == "LOGOUT" {
				t.logout = true
			}
		} else {
			t.nCmdTag = 0
		}
	}
	switch {
	case !has:
		return 0
	case lit.nonSync:
		return lit.size
	}
	// Wait for the upstream: "+" and the data follows; a tagged answer and
	// it does not.
	t.pendingSize = lit.size
	t.nPendingTag = copy(t.pendingTag[:], t.cmdTag[:t.nCmdTag])
	return 0
}

// endServerLine: a response (or the rest of one, after a literal) ended.
// Response literals always follow their line.
func (t *cmdTracker) endServerLine(s *lineScanner, lit literal, has bool) int64 {
	if !s.cont && t.pendingSize > 0 && len(s.line) > 0 {
		switch line := s.line; {
		case line[0] == '+':
			t.client.skip += t.pendingSize
			t.pendingSize = 0
		case line[0] != '*' && t.nPendingTag > 0 && bytes.HasPrefix(line, t.pendingTag[:t.nPendingTag]) &&
			len(line) > t.nPendingTag && (line[t.nPendingTag] == ' ' || t.nPendingTag == maxTrackedTag):
			// The command's tagged answer came instead: the literal was
			// refused and the client's next bytes are a new command.
			t.pendingSize = 0
			t.client.cont = false
		}
	}
	if has {
		return lit.size
	}
	return 0
}
