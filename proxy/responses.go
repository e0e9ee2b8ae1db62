package proxy

import (
	"errors"
	"fmt"
	"io"
)

// relayResponses relays upstream responses to the client until the tagged
// response for tag (returned, not written: callers decide when it goes
// out) or, with continueStop, a continuation request (written).
func (lp *loginPhase) relayResponses(tag string, onContinue continueMode) (respKind, []byte, error) {
	for {
		kind, line, err := lp.readUpstreamResponse(tag)
		if err != nil {
			return kind, nil, err
		}
		if kind == respContinue && onContinue == continueRefuse {
			return kind, nil, lp.upstreamFailed(fmt.Errorf("a continuation request (%.60q) to a command sent whole", trimCRLF(line)))
		}
		if kind == respTagged {
			if line == nil { // it came with a literal and has been relayed
				return kind, nil, nil
			}
			out, caps := rewriteCaps(nil, trimCRLF(line))
			lp.sawCaps(trimCRLF(line), caps)
			return kind, append(out, '\r', '\n'), nil
		}
		if kind == respContinue && onContinue != continueStop {
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

// continueMode says what relayResponses does with a continuation request.
type continueMode uint8

const (
	continueRelay  continueMode = iota // relay it and pass the client's one-line answer on
	continueStop                       // relay it and return (the caller answers it)
	continueRefuse                     // out of protocol: the command went whole (LOGIN)
)

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
		if errors.Is(err, errLineTooLong) {
			err = fmt.Errorf("a response line over %d bytes", upstreamMaxLine)
		}
		return respUntagged, nil, lp.upstreamFailed(err)
	}
	kind, _ := classify(line, tag)
	switch {
	case kind == respUntagged && (len(line) < 2 || line[0] != '*'):
		// One command at a time goes upstream: any other tag, or no
		// tag at all, is out of protocol (RFC 9051 §2.2.2), and waiting
		// on would hang the client until its timeout.
		return kind, nil, lp.upstreamFailed(fmt.Errorf("a response that is neither untagged nor tagged %s: %.60q", tag, trimCRLF(line)))
	case kind == respUntagged && hasPrefixFold(line, "* BYE"):
		lp.upBye = true
	}
	lit, has, err := trailingLiteral(line)
	if err != nil || !has {
		lp.last = append(lp.last[:0], line...)
		return kind, lp.last, nil
	}
	for has {
		if lit.size > maxResponseLiteral {
			return kind, nil, lp.upstreamFailed(fmt.Errorf("a literal of %d bytes in a response (at most %d)", lit.size, maxResponseLiteral))
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
