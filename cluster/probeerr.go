package cluster

// What Probe found wrong, and how an error of Redis, a sentinel or the
// network is sorted.

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"slices"
	"strings"

	"github.com/redis/rueidis"
)

// ProbeKind sorts what Probe found wrong.
type ProbeKind int

const (
	// ProbeUnreachable: Redis (or every sentinel) did not answer in
	// time: refused, timed out, not resolved, a cluster that is down or
	// loading. A warning, not a configuration error: a node starts on
	// local limits and switches to the shared ones when Redis answers.
	ProbeUnreachable ProbeKind = iota + 1
	// ProbeAuth: Redis or a sentinel refused the user and password
	// (WRONGPASS) or wants them (NOAUTH).
	ProbeAuth
	// ProbeRights: the ACL user may not send a command, touch the keys or
	// use the channel imapgate needs (NOPERM); Missing has the ACL rules
	// to add.
	ProbeRights
	// ProbeConfig: anything else that stays wrong until the
	// configuration changes: the URL, a replica named as the master
	// (READONLY), TLS that fails (a certificate that does not verify, a
	// server that wants a client certificate), a scheme that does not
	// match the server (rediss:// to a plain Redis, redis:// to a TLS
	// port), a unix socket this user may not open, a master_set the
	// sentinels do not know, a server that is not Redis, an answer
	// imapgate cannot use.
	ProbeConfig
)

// A ProbeError is what Probe found wrong. Its message names what Probe
// was doing and what to change, never a password.
type ProbeError struct {
	Kind ProbeKind
	// Missing lists the ACL rules to add (ProbeRights), as "+evalsha",
	// "~{imapgate}:*", "&{imapgate}:ev".
	Missing []string
	msg     string
}

func (e *ProbeError) Error() string { return e.msg }

// kindOf sorts an error of a connection or a call. Redis's own errors
// start with their code (WRONGPASS, NOPERM, …); the rest are the
// network's or the client's.
func kindOf(err error) ProbeKind {
	var (
		header   tls.RecordHeaderError
		redisErr *rueidis.RedisError
	)
	code, _, _ := strings.Cut(err.Error(), " ")
	switch {
	case isCertError(err), errors.As(err, &header), isTLSAlert(err):
		return ProbeConfig
	case errors.Is(err, fs.ErrPermission): // EACCES, EPERM: a unix socket's mode, a local policy
		return ProbeConfig
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ProbeUnreachable
	case code == "WRONGPASS" || code == "NOAUTH":
		return ProbeAuth
	case code == "NOPERM":
		return ProbeRights
	case slices.Contains([]string{"LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "BUSY"}, code):
		return ProbeUnreachable
	case errors.As(err, &redisErr), isRedisCode(code):
		return ProbeConfig
	case strings.Contains(err.Error(), "unknown message type"): // not RESP: not Redis
		return ProbeConfig
	}
	return ProbeUnreachable
}

// isCertError reports a server certificate that does not verify.
func isCertError(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

// isRedisCode reports whether a message's first word is an error code
// of Redis (ERR, READONLY, …): capital letters only.
func isRedisCode(w string) bool {
	return len(w) >= 2 && strings.Trim(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
}

var deniedCommand = regexp.MustCompile(`permissions to run the '([^']+)' command`)

// aclRule is the ACL rule a NOPERM asks for: "+cmd" for a command,
// "~{prefix}:*" for the keys, "&{prefix}:ev" for the channel. A script
// refused a command says neither which nor why; "" (the commands
// checked one by one tell).
func aclRule(msg string, k keys) string {
	if m := deniedCommand.FindStringSubmatch(msg); m != nil {
		return "+" + m[1]
	}
	switch {
	case strings.Contains(msg, "one of the keys"):
		return "~" + k.p + "*"
	case strings.Contains(msg, "one of the channels"):
		return "&" + k.channel
	case strings.Contains(msg, "The user executing the script can't"):
		return ""
	}
	return "(" + msg + ")"
}

// side names who answered and which credentials were theirs, for the
// messages.
type side struct {
	who      string // "Redis at 127.0.0.1:6379", "the sentinel at …"
	creds    string // "the URL's user and password", "sentinel_username and sentinel_password"
	sentinel bool
}

// describe makes err a ProbeError saying what to change; doing is what
// was being done ("connecting", "EVAL"). The error's own message is
// masked (p.mask) where it quotes a password; the rest is imapgate's
// own words, which hold none.
func (p *prober) describe(s side, doing string, err error) *ProbeError {
	msg, user := p.mask(err.Error()), p.user
	if s.sentinel {
		user = cmp.Or(p.copt.Sentinel.Username, "default")
	}
	kind := kindOf(err)
	code, _, _ := strings.Cut(err.Error(), " ") // Redis's code, from the text before masking
	var text string
	switch {
	case kind == ProbeUnreachable:
		text = fmt.Sprintf("%s did not answer (%s: %s); a node would start on local limits "+
			"and switch to the shared ones when Redis answers", s.who, doing, msg)
	case code == "WRONGPASS" && p.noPassword(s):
		text = fmt.Sprintf("%s refused user %s without a password (WRONGPASS): %s gives none; "+
			"add the ACL user's password (>password on its line)", s.who, user, s.creds)
	case code == "WRONGPASS":
		text = fmt.Sprintf("%s refused user %s and its password (WRONGPASS: a wrong password, an unknown user "+
			"or one that is off): check %s against the ACL user's line (on, >password)", s.who, user, s.creds)
	case code == "NOAUTH":
		text = fmt.Sprintf("%s requires a user and password (NOAUTH): give %s", s.who, s.creds)
	case kind == ProbeRights: // a right missing before the rights were checked
		rule := aclRule(msg, p.k)
		return &ProbeError{Kind: kind, Missing: []string{rule},
			msg: fmt.Sprintf("%s refused user %s (%s: %s): add %s to its ACL", s.who, user, doing, msg, rule)}
	case errors.Is(err, fs.ErrPermission) && p.unix:
		text = fmt.Sprintf("%s: permission denied on the socket (%s: %s): add the user imapgate runs as to the "+
			"socket's group (adduser imapgate redis) or fix its mode (unixsocketperm 770 in redis.conf)", s.who, doing, msg)
	case isCertError(err):
		text = fmt.Sprintf("%s: its certificate does not verify (%s: %s): give the CA that signed it in "+
			"cluster.tls_ca_file, and name the host in the URL as the certificate does", s.who, doing, msg)
	case isTLSAlert(err) && (strings.Contains(msg, "certificate required") || strings.Contains(msg, "bad certificate")):
		text = fmt.Sprintf("%s wants a client certificate (%s: %s), which imapgate does not send: "+
			"set tls-auth-clients no (or optional) in its redis.conf; the password authenticates imapgate", s.who, doing, msg)
	case strings.Contains(msg, "DB index is out of range"):
		text = fmt.Sprintf("%s has no such database (%s: %s): the URL's database number must be below "+
			"the server's databases setting (16 unless its redis.conf says otherwise)", s.who, doing, msg)
	case code == "READONLY":
		text = fmt.Sprintf("%s is a replica (%s): name the master, or the sentinels with master_set", s.who, msg)
	case strings.Contains(msg, "unknown message type"):
		text = fmt.Sprintf("%s does not speak Redis's protocol (%s: %s)", s.who, doing, msg)
	default:
		text = fmt.Sprintf("%s: %s: %s", s.who, doing, msg)
	}
	return &ProbeError{Kind: kind, msg: text}
}

// missingRights is the error for rights the user lacks, with the rule
// to add them.
func missingRights(user string, rules []string) *ProbeError {
	slices.Sort(rules)
	rules = slices.Compact(rules)
	r := strings.Join(rules, " ")
	return &ProbeError{Kind: ProbeRights, Missing: rules,
		msg: fmt.Sprintf("user %s lacks rights imapgate needs (NOPERM): add %s to its ACL "+
			"(ACL SETUSER %s %s, and the same in its user line of redis.conf or the ACL file)", user, r, user, r)}
}

// noPassword reports whether the side's credentials give no password.
func (p *prober) noPassword(s side) bool {
	if s.sentinel {
		return p.copt.Sentinel.Password == ""
	}
	return p.copt.Password == ""
}
