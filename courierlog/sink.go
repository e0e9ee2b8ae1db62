package courierlog

import (
	"strings"
	"sync"
	"time"
)

// FlushInterval is how long a line may wait in a sink's buffer. Lines are
// written in batches so a busy proxy makes one write per interval instead
// of one per line; fail2ban and log readers see them this much later.
const FlushInterval = 100 * time.Millisecond

// maxPending bounds a sink's buffer: past it, Write flushes at once.
const maxPending = 32 << 10

// pending holds framed lines not yet written and, for each, its priority
// and where its message starts, so a line the output could not take can be
// handed unframed to a fallback sink. Every frame ends in one terminator
// byte ('\n' for lines, NUL for syslog messages).
type pending struct {
	b     []byte
	lines []pendingLine
	armed bool // a delayed flush is scheduled
}

type pendingLine struct {
	p               Priority
	start, msg, end int // offsets in b: frame, message, after the terminator
}

// add appends the line whose frame began at start and whose message is
// msg, closed by term.
func (q *pending) add(p Priority, start int, msg []byte, term byte) {
	m := len(q.b)
	q.b = append(q.b, msg...)
	q.b = append(q.b, term)
	q.lines = append(q.lines, pendingLine{p: p, start: start, msg: m, end: len(q.b)})
}

// added decides what follows an add, with the sink's lock held: flush now
// (it reports true) once maxPending bytes wait, else schedule flush once
// for FlushInterval later, so a burst of lines costs one write. The sink's
// flush must call flushed.
func (q *pending) added(flush func()) (now bool) {
	if len(q.b) >= maxPending {
		return true
	}
	if !q.armed {
		q.armed = true
		time.AfterFunc(FlushInterval, flush)
	}
	return false
}

// flushed records that the lines went out (or were spilled): the next add
// schedules a new delayed flush.
func (q *pending) flushed() { q.armed = false }

// spill hands the lines from index i on to fallback and returns how many
// there were.
func (q *pending) spill(i int, fallback Sink) int {
	for _, l := range q.lines[i:] {
		fallback.Write(l.p, q.b[l.msg:l.end-1])
	}
	return len(q.lines) - i
}

func (q *pending) reset() {
	q.b = q.b[:0]
	q.lines = q.lines[:0]
}

// Memory keeps lines in memory; tests read them.
type Memory struct {
	mu    sync.Mutex
	lines []string
}

func (m *Memory) Write(p Priority, msg []byte) {
	m.mu.Lock()
	m.lines = append(m.lines, p.String()+" "+string(msg))
	m.mu.Unlock()
}

// Lines returns "priority message" for each line so far.
func (m *Memory) Lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// Contains reports whether some line contains sub.
func (m *Memory) Contains(sub string) bool {
	for _, l := range m.Lines() {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// wentTo says where lines a sink could not write went.
func wentTo(fallback Sink) string {
	if fallback == Discard {
		return "were lost"
	}
	return "went to stderr"
}
