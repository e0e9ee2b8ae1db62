package proxy

import (
	"io"
)

// forward relays the command in lp.cmd (its first line read so far) and
// the rest of it, literals included, then the responses up to the tagged
// one. Synchronising literals wait for the upstream's continuation.
func (lp *loginPhase) forward(tag string) outcome {
	seg := lp.cmd
	for {
		lit, has, err := trailingLiteral(seg)
		if err != nil {
			return lp.invalid(tag, "Invalid literal.")
		}
		if has && lit.size > int64(lp.set.Login.MaxLiteral) {
			return lp.literalTooLarge()
		}
		if _, err := lp.c.up.Write(seg); err != nil {
			return closed
		}
		if !has {
			break
		}
		if !lit.nonSync {
			kind, last, err := lp.relayResponses(tag, continueStop)
			if err != nil {
				return closed
			}
			if kind == respTagged {
				return onlyIf(lp.c.writeClient(last))
			}
		}
		if _, err := io.CopyN(lp.c.up, lp.cr, lit.size); err != nil {
			return closed
		}
		line, err := readLine(lp.cr, lp.set.Login.MaxLine)
		if err != nil {
			return closed
		}
		seg = append(lp.cmd[:0], line...)
	}
	_, last, err := lp.relayResponses(tag, continueRelay)
	if err != nil {
		return closed
	}
	return onlyIf(lp.c.writeClient(last))
}

// readCommand reads the rest of the command in lp.cmd locally, answering
// synchronising literals itself, so lp.cmd ends up holding all of it.
func (lp *loginPhase) readCommand() outcome {
	seg := lp.cmd
	for {
		lit, has, err := trailingLiteral(seg)
		if err != nil {
			return closed
		}
		if !has {
			return carryOn
		}
		if lit.size > int64(lp.set.Login.MaxLiteral) {
			return lp.literalTooLarge()
		}
		if !lit.nonSync {
			if lp.c.writeClient([]byte("+ Ready for literal data\r\n")) != nil {
				return closed
			}
		}
		start := len(lp.cmd)
		lp.cmd = append(lp.cmd, make([]byte, lit.size)...)
		if _, err := io.ReadFull(lp.cr, lp.cmd[start:]); err != nil {
			return closed
		}
		line, err := readLine(lp.cr, lp.set.Login.MaxLine)
		if err != nil {
			return closed
		}
		start = len(lp.cmd)
		lp.cmd = append(lp.cmd, line...)
		seg = lp.cmd[start:]
	}
}

// answerID answers ID for an upstream that does not support it (courier
// only knows ID after login; go-imap's server hangs up on it).
func (lp *loginPhase) answerID(tag string) outcome {
	if o := lp.readCommand(); o != carryOn {
		return o
	}
	if _, _, _, err := parseArgs(lp.cmd); err != nil {
		return lp.invalid(tag, "Invalid ID command.")
	}
	return onlyIf(lp.writeClientf("* ID NIL\r\n%s OK ID completed.\r\n", tag))
}
