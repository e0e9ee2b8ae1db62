package proxy

import (
	"io"
)

// relayResponses relays upstream responses to the client until the tagged
// response for tag (returned, not written: callers decide when it goes
// out) or, if stopAtContinuation, a continuation request (written).
func (lp *loginPhase) relayResponses(tag string, stopAtContinuation bool) (respKind, []byte, error) {
	for {
		kind, line, err := lp.readUpstreamResponse(tag)
		if err != nil {
			return kind, nil, err
		}
		if kind == respTagged {
			if line == nil { // it came with a literal and has been relayed
				return kind, nil, nil
			}
			out, caps := rewriteCaps(nil, trimCRLF(line))
			lp.sawCaps(trimCRLF(line), caps)
			return kind, append(out, '\r', '\n'), nil
		}
		if kind == respContinue && !stopAtContinuation {
			// Unexpected continuation: pass the client's one-line answer on.
			if err := lp.c.writeClient(line); err != nil {
				return kind, nil, err
			}
			answer, err := readLine(lp.cr, lp.set.Login.MaxLine)
			if err != nil {
				return kind, nil, err
			}
			if _, err := lp.c.up.Write(answer); err != nil {
				return kind, nil, err
			}
			continue
		}
		if line != nil {
			if err := lp.relayLine(trimCRLF(line)); err != nil {
				return kind, nil, err
			}
		}
		if kind == respContinue {
			return kind, nil, nil
		}
	}
}

// maxResponseLiteral bounds a literal in an upstream response before login.
const maxResponseLiteral = 64 << 10

// readUpstreamResponse reads one response. A response whose line ends in a
// literal is relayed to the client as it is read (line, literal, rest) and
// returned as nil; otherwise the line is returned (with CRLF, aliasing a
// reused buffer) for the caller to relay.
func (lp *loginPhase) readUpstreamResponse(tag string) (respKind, []byte, error) {
	return lp.readResponse(tag, lp.c.writeClient)
}

// readUpstreamResponseQuiet reads one response as readUpstreamResponse
// does, but drops a response with literals instead of relaying it: for
// the answers to commands imapgate sent on its own.
func (lp *loginPhase) readUpstreamResponseQuiet(tag string) (respKind, []byte, error) {
	return lp.readResponse(tag, func([]byte) error { return nil })
}

func (lp *loginPhase) readResponse(tag string, relay func([]byte) error) (respKind, []byte, error) {
	line, err := readLine(lp.ur, upstreamMaxLine)
	if err != nil {
		return respUntagged, nil, err
	}
	kind, _ := classify(line, tag)
	lit, has, err := trailingLiteral(line)
	if err != nil || !has {
		lp.last = append(lp.last[:0], line...)
		return kind, lp.last, nil
	}
	for has {
		if lit.size > maxResponseLiteral {
			return kind, nil, errLiteralTooLong
		}
		if err := relay(line); err != nil {
			return kind, nil, err
		}
		if _, err := io.CopyN(writerFunc(relay), lp.ur, lit.size); err != nil {
			return kind, nil, err
		}
		if line, err = readLine(lp.ur, upstreamMaxLine); err != nil {
			return kind, nil, err
		}
		if lit, has, err = trailingLiteral(line); err != nil {
			return kind, nil, err
		}
	}
	return kind, nil, relay(line)
}

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
