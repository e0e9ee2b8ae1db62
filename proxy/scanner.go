package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// The login-phase scanner. go-imap v2 keeps its wire decoder internal, so the
// proxy carries this small, strict reader of RFC 9051 §9 syntax: enough to
// find command boundaries (lines and literals), learn the user name from
// LOGIN and AUTHENTICATE PLAIN, and recognise tagged results. Everything it
// reads is bounded.

var (
	errLineTooLong = errors.New("line too long")
	errBadSyntax   = errors.New("syntax error")
)

// readLine returns the next line including its terminating LF. The slice
// aliases r's buffer and is valid until the next read. A line longer than
// max bytes (or than r's buffer) is errLineTooLong.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > max {
		return nil, errLineTooLong
	}
	return line, err
}

// trimCRLF strips a trailing LF and an optional CR before it.
func trimCRLF(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r"))
}

// literal describes a literal announced at the end of a line.
type literal struct {
	size    int64
	nonSync bool // {n+} (LITERAL+) or {n-} (LITERAL-): no continuation
}

// trailingLiteral reports whether line (with or without CRLF) ends with a
// literal announcement "{n}", "{n+}" or "{n-}".
func trailingLiteral(line []byte) (lit literal, ok bool, err error) {
	line = trimCRLF(line)
	if len(line) == 0 || line[len(line)-1] != '}' {
		return literal{}, false, nil
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return literal{}, false, nil
	}
	digits := line[open+1 : len(line)-1]
	if n := len(digits); n > 0 && (digits[n-1] == '+' || digits[n-1] == '-') {
		lit.nonSync = true
		digits = digits[:n-1]
	}
	if len(digits) == 0 || len(digits) > 10 {
		return literal{}, false, errBadSyntax
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return literal{}, false, errBadSyntax
		}
	}
	lit.size, err = strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		return literal{}, false, errBadSyntax
	}
	return lit, true, nil
}

// isAtomChar reports whether c may appear in an atom (RFC 9051 ATOM-CHAR).
func isAtomChar(c byte) bool {
	if c <= 0x20 || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

// isTagChar: tag = 1*<any ASTRING-CHAR except "+">.
func isTagChar(c byte) bool { return c != '+' && (isAtomChar(c) || c == ']') }

// commandHead splits "tag SP name ..." from the first line of a command.
// The name is returned upper-cased.
func commandHead(line []byte) (tag, name string, err error) {
	line = trimCRLF(line)
	i := 0
	for i < len(line) && isTagChar(line[i]) {
		i++
	}
	if i == 0 || i >= len(line) || line[i] != ' ' {
		return "", "", errBadSyntax
	}
	tag = string(line[:i])
	j := i + 1
	for j < len(line) && isAtomChar(line[j]) {
		j++
	}
	if j == i+1 || (j < len(line) && line[j] != ' ') {
		return tag, "", errBadSyntax
	}
	return tag, string(bytes.ToUpper(line[i+1 : j])), nil
}

// token is one argument of a command: an atom (including NIL), a quoted
// string (unescaped), a literal's content, or a parenthesised list (kept
// as one token: the login phase never needs its inside).
type token struct {
	kind tokenKind
	val  []byte
}

type tokenKind uint8

const (
	tokAtom tokenKind = iota
	tokString
	tokList
)

// parseArgs parses the arguments of a complete command: cmd is every byte
// of it as received, literal data included, and must end with CRLF (or LF).
// It returns the tag, the upper-cased name and the arguments.
func parseArgs(cmd []byte) (tag, name string, args []token, err error) {
	tag, name, err = commandHead(cmd)
	if err != nil {
		return tag, name, nil, err
	}
	p := len(tag) + 1 + len(name)
	for {
		if p >= len(cmd) {
			return tag, name, args, errBadSyntax
		}
		switch cmd[p] {
		case '\r', '\n':
			if rest := cmd[p:]; string(rest) != "\r\n" && string(rest) != "\n" {
				return tag, name, args, errBadSyntax
			}
			return tag, name, args, nil
		case ' ':
			p++
		default:
			return tag, name, args, errBadSyntax
		}
		var t token
		t, p, err = parseToken(cmd, p, 0)
		if err != nil {
			return tag, name, args, err
		}
		args = append(args, t)
		if len(args) > 64 {
			return tag, name, args, errBadSyntax
		}
	}
}

// maxListDepth bounds nesting of parenthesised lists.
const maxListDepth = 8

func parseToken(b []byte, p, depth int) (token, int, error) {
	if p >= len(b) {
		return token{}, p, errBadSyntax
	}
	switch c := b[p]; {
	case c == '"':
		return parseQuoted(b, p)
	case c == '{':
		return parseLiteral(b, p)
	case c == '(':
		if depth >= maxListDepth {
			return token{}, p, errBadSyntax
		}
		start := p
		p++
		for n := 0; p < len(b) && b[p] != ')'; n++ {
			if n > 0 {
				if b[p] != ' ' {
					return token{}, p, errBadSyntax
				}
				p++
			}
			var err error
			if _, p, err = parseToken(b, p, depth+1); err != nil {
				return token{}, p, err
			}
		}
		if p >= len(b) {
			return token{}, p, errBadSyntax
		}
		p++
		return token{kind: tokList, val: b[start:p]}, p, nil
	default:
		start := p
		// ASTRING-CHAR: atoms may contain ']' (resp-specials) in astrings.
		for p < len(b) && (isAtomChar(b[p]) || b[p] == ']') {
			p++
		}
		if p == start {
			return token{}, p, errBadSyntax
		}
		return token{kind: tokAtom, val: b[start:p]}, p, nil
	}
}

func parseQuoted(b []byte, p int) (token, int, error) {
	var out []byte
	for p++; p < len(b); p++ {
		switch c := b[p]; c {
		case '"':
			return token{kind: tokString, val: out}, p + 1, nil
		case '\\':
			p++
			if p >= len(b) || (b[p] != '"' && b[p] != '\\') {
				return token{}, p, errBadSyntax
			}
			out = append(out, b[p])
		case '\r', '\n', 0:
			return token{}, p, errBadSyntax
		default:
			out = append(out, c)
		}
	}
	return token{}, p, errBadSyntax
}

func parseLiteral(b []byte, p int) (token, int, error) {
	end := bytes.IndexByte(b[p:], '\n')
	if end < 0 {
		return token{}, p, errBadSyntax
	}
	head := b[p : p+end+1]
	lit, ok, err := trailingLiteral(head)
	if err != nil || !ok || bytes.IndexByte(trimCRLF(head), '}') != len(trimCRLF(head))-1 {
		return token{}, p, errBadSyntax
	}
	start := p + end + 1
	if lit.size > int64(len(b)-start) {
		return token{}, p, errBadSyntax
	}
	stop := start + int(lit.size)
	return token{kind: tokString, val: b[start:stop]}, stop, nil
}

// astring returns the value of an atom or string token.
func (t token) astring() (string, bool) {
	if t.kind == tokList {
		return "", false
	}
	return string(t.val), true
}

// loginUser returns the user name of a complete LOGIN command.
func loginUser(args []token) (string, error) {
	if len(args) != 2 {
		return "", fmt.Errorf("LOGIN takes 2 arguments, got %d: %w", len(args), errBadSyntax)
	}
	u, ok := args[0].astring()
	if !ok {
		return "", errBadSyntax
	}
	return u, nil
}

// response classification of an upstream line (without CRLF).
type respKind uint8

const (
	respUntagged respKind = iota
	respContinue
	respTagged
)

// classify reports what kind of response line is, and for a tagged line
// whether its status is OK.
func classify(line []byte, tag string) (kind respKind, ok bool) {
	switch {
	case len(line) > 0 && line[0] == '+':
		return respContinue, false
	case len(line) > 1 && line[0] == '*' && line[1] == ' ':
		return respUntagged, false
	case len(line) > len(tag) && string(line[:len(tag)]) == tag && line[len(tag)] == ' ':
		rest := line[len(tag)+1:]
		return respTagged, len(rest) >= 2 && (rest[0]|0x20) == 'o' && (rest[1]|0x20) == 'k' &&
			(len(rest) == 2 || rest[2] == ' ')
	}
	return respUntagged, false
}

// dropCaps are capabilities that mean nothing to a client already on TLS.
var dropCaps = [][]byte{[]byte("STARTTLS"), []byte("LOGINDISABLED")}

// rewriteCaps removes STARTTLS and LOGINDISABLED from a "* CAPABILITY"
// response or a "[CAPABILITY …]" response code in line (no CRLF), appending
// the result to dst. It also returns the capability list it saw, if any.
func rewriteCaps(dst, line []byte) (out []byte, caps [][]byte) {
	start, end := capRange(line)
	if start < 0 {
		return append(dst, line...), nil
	}
	dst = append(dst, line[:start]...)
	first := true
	for _, c := range bytes.Fields(line[start:end]) {
		if isDropped(c) {
			continue
		}
		caps = append(caps, c)
		if !first {
			dst = append(dst, ' ')
		}
		first = false
		dst = append(dst, c...)
	}
	return append(dst, line[end:]...), caps
}

// capRange finds the capability list inside line: [start,end) of the
// space-separated capability names.
func capRange(line []byte) (int, int) {
	const word = "CAPABILITY "
	if len(line) > 2 && line[0] == '*' && line[1] == ' ' && hasPrefixFold(line[2:], word) {
		return 2 + len(word), len(line)
	}
	i := indexFold(line, "["+word)
	if i < 0 {
		return -1, -1
	}
	start := i + 1 + len(word)
	j := bytes.IndexByte(line[start:], ']')
	if j < 0 {
		return -1, -1
	}
	return start, start + j
}

// indexFold is bytes.Index ignoring ASCII case. It indexes b itself:
// upper-casing b first would change lengths wherever b is not valid UTF-8
// (bytes.ToUpper maps an invalid byte to the 3-byte U+FFFD), and an index
// into the copy would slice b wrongly.
func indexFold(b []byte, sub string) int {
	for i := 0; i+len(sub) <= len(b); i++ {
		if hasPrefixFold(b[i:], sub) {
			return i
		}
	}
	return -1
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], []byte(prefix))
}

func isDropped(c []byte) bool {
	for _, d := range dropCaps {
		if bytes.EqualFold(c, d) {
			return true
		}
	}
	return false
}

// capFields copies the capability names of list (a capRange), so they
// outlive the reader's buffer.
func capFields(list []byte) [][]byte {
	var out [][]byte
	for _, c := range bytes.Fields(list) {
		out = append(out, bytes.Clone(c))
	}
	return out
}

func hasCap(caps [][]byte, name string) bool {
	for _, c := range caps {
		if bytes.EqualFold(c, []byte(name)) {
			return true
		}
	}
	return false
}
