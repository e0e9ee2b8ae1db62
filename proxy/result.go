package proxy

import (
	"bytes"
)

// loginClass is what a tagged answer to LOGIN or AUTHENTICATE means for
// the penalty and the log. Only authFailed is a wrong user name or
// password: courier writes its "LOGIN FAILED" line (the one fail2ban's
// courier-auth filter bans on) only then, and so does imapgate.
type loginClass uint8

const (
	loginOK         loginClass = iota
	loginAuthFailed            // NO [AUTHENTICATIONFAILED], a NO without a code, or a code not listed below
	loginRefused               // NO with a code that says the credentials are not the problem
	loginBad                   // BAD: the upstream did not accept the command's syntax
	loginCancelled             // the client cancelled AUTHENTICATE with "*" (RFC 9051 §6.2.2)
)

// refusalCodes are the response codes of a NO that refuses a login for a
// reason other than the credentials (RFC 5530 §3): the server's limits
// (LIMIT: Dovecot's mail_max_userip_connections), its health
// (UNAVAILABLE, SERVERBUG), its policy (PRIVACYREQUIRED: plaintext login
// over an unencrypted hop; CONTACTADMIN, EXPIRED) or an authorization
// identity the authenticated user may not act as (AUTHORIZATIONFAILED: the
// password was right). Each is its own metric label.
var refusalCodes = []string{
	"LIMIT", "UNAVAILABLE", "SERVERBUG", "PRIVACYREQUIRED", "CONTACTADMIN", "EXPIRED",
	"AUTHORIZATIONFAILED", "INUSE",
}

// loginOutcome is a classified tagged answer. reason is the metric label
// and the log line's reason: "ok", "failed", "bad", "cancelled" or a
// refusal code in lower case.
type loginOutcome struct {
	class  loginClass
	reason string
}

// classifyLogin classifies the tagged answer line (no CRLF) to a LOGIN or
// AUTHENTICATE with tag; cancelled says the client answered a continuation
// with "*".
func classifyLogin(line []byte, tag string, cancelled bool) loginOutcome {
	status, code := taggedStatus(line, tag)
	switch {
	case status == "OK":
		return loginOutcome{loginOK, "ok"}
	case cancelled:
		return loginOutcome{loginCancelled, "cancelled"}
	case status == "BAD":
		return loginOutcome{loginBad, "bad"}
	}
	for _, c := range refusalCodes {
		if code == c {
			return loginOutcome{loginRefused, lowerASCII(c)}
		}
	}
	return loginOutcome{loginAuthFailed, "failed"}
}

// loginReasons are every reason classifyLogin can return, for metrics to
// create their label values up front.
func loginReasons() []string {
	out := []string{"ok", "failed", "bad", "cancelled"}
	for _, c := range refusalCodes {
		out = append(out, lowerASCII(c))
	}
	return out
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// maxCodeLen bounds a response code's name; longer is not one we know.
const maxCodeLen = 32

// taggedStatus parses "tag SP status [SP "[" code ...]" from a tagged
// response line (no CRLF; RFC 9051 §7.1 resp-cond-state) and returns the
// status (OK, NO, BAD, upper-cased) and the response code's name
// (upper-cased), each empty if absent or malformed. The line is the
// upstream's and is read defensively: any bytes at all are safe.
func taggedStatus(line []byte, tag string) (status, code string) {
	if len(line) <= len(tag) || string(line[:len(tag)]) != tag || line[len(tag)] != ' ' {
		return "", ""
	}
	rest := line[len(tag)+1:]
	sp := bytes.IndexByte(rest, ' ')
	word := rest
	if sp >= 0 {
		word, rest = rest[:sp], rest[sp+1:]
	} else {
		rest = nil
	}
	for _, s := range [...]string{"OK", "NO", "BAD"} {
		if bytes.EqualFold(word, []byte(s)) {
			status = s
		}
	}
	if status == "" || len(rest) == 0 || rest[0] != '[' {
		return status, ""
	}
	rest = rest[1:]
	end := 0
	for end < len(rest) && end <= maxCodeLen && isAtomChar(rest[end]) {
		end++
	}
	if end == 0 || end > maxCodeLen || end == len(rest) || (rest[end] != ']' && rest[end] != ' ') {
		return status, ""
	}
	return status, string(bytes.ToUpper(rest[:end]))
}
