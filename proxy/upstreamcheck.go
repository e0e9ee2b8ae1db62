package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"syscall"
	"time"

	"imapgate/courierlog"
	"imapgate/upstream"
)

// An upstream that does not trust imapgate's hop refuses plaintext logins:
// it advertises LOGINDISABLED (RFC 9051 §6.2.3) or answers a correct LOGIN
// with NO [PRIVACYREQUIRED] (RFC 5530). imapgate's client side is always
// TLS, so this is a misconfiguration of the upstream, never the client's
// fault: it is reported once in the log (with the fix) and on the admin
// status, and the client's login is not counted as a failure.

type upstreamProblemKind uint8

const (
	problemLoginDisabled upstreamProblemKind = iota
	problemPrivacyRequired
	numProblems
)

// upstreamReport is one problem seen, for the admin status.
type upstreamReport struct {
	Since   time.Time
	Message string
}

const trustFix = "Dovecot: put imapgate's address in login_trusted_networks (and in haproxy_trusted_networks " +
	"with upstream.proxy_protocol = \"v2\", whose SSL TLV says the client used TLS); " +
	"courier: set IMAP_TLS_REQUIRED=0 in /etc/courier/imapd-ssl, where Debian sets it (imapgate did the TLS; the hop to courier is on loopback)"

var problemText = [numProblems]string{
	problemLoginDisabled: "upstream %s advertises LOGINDISABLED to imapgate: it does not trust imapgate's connection " +
		"and will refuse every plaintext LOGIN. " + trustFix,
	problemPrivacyRequired: "upstream %s answered a login with NO [PRIVACYREQUIRED] (or with a NO after it advertised LOGINDISABLED): it does not trust imapgate's " +
		"connection and refuses plaintext logins (clients see the upstream's answer; these are not counted as " +
		"failed logins). " + trustFix,
}

// upstreamProblem records problem k; the first time since start or the
// last reload it is logged.
func (s *Server) upstreamProblem(k upstreamProblemKind) {
	if s.problems[k].Load() != nil {
		return
	}
	r := &upstreamReport{Since: time.Now(), Message: fmt.Sprintf(problemText[k], s.settings().Upstream)}
	if s.problems[k].CompareAndSwap(nil, r) {
		s.log.Message(courierlog.Err, r.Message)
	}
}

// UpstreamProblems returns the upstream misconfigurations seen since start
// or the last SetUpstream, each with the fix, for the admin status.
func (s *Server) UpstreamProblems() []string {
	var out []string
	for i := range s.problems {
		if r := s.problems[i].Load(); r != nil {
			out = append(out, r.Message)
		}
	}
	return out
}

// ForgetUpstreamProblems clears the upstream problems seen (a reload's new
// upstream starts with a clean slate).
func (s *Server) ForgetUpstreamProblems() {
	for i := range s.problems {
		s.problems[i].Store(nil)
	}
}

// probeClient is who a probe connection claims to be: a TLS client on
// loopback, as every real session is a TLS client, so that an upstream
// reading the PROXY v2 SSL TLV answers the probe as it will answer clients.
var probeClient = upstream.Client{
	Remote:      netip.MustParseAddrPort("127.0.0.1:0"),
	Local:       netip.MustParseAddrPort("127.0.0.1:993"),
	TLSVersion:  tls.VersionTLS13,
	CipherSuite: tls.TLS_AES_128_GCM_SHA256,
}

// ProbeUpstream connects to the upstream once, as a session would, reads
// its greeting, asks for its capabilities and logs out. It returns an
// error if the upstream cannot be reached or does not greet, and records
// (and logs) a LOGINDISABLED it advertises. imapgate calls it at start so
// a misconfigured upstream is named before the first client meets it.
func (s *Server) ProbeUpstream(ctx context.Context) error {
	set := s.settings()
	ctx, cancel := context.WithTimeout(ctx, set.Login.GreetingTimeout)
	defer cancel()
	up, err := set.Upstream.Dial(ctx, probeClient)
	if err != nil {
		return err
	}
	defer up.Close()
	if d, ok := ctx.Deadline(); ok {
		up.SetDeadline(d)
	}
	r := bufio.NewReaderSize(up, upstreamMaxLine)
	caps, err := probeCaps(r, func(b []byte) error { _, err := up.Write(b); return err })
	if err != nil {
		return fmt.Errorf("probe %s: %w%s", set.Upstream, err, proxyHintFor(err, set.Upstream))
	}
	if hasCap(caps, "LOGINDISABLED") {
		s.upstreamProblem(problemLoginDisabled)
	}
	return nil
}

// proxyHeaderHint names the likeliest cause of an upstream that hangs up
// on the probe: a PROXY header the listener does not expect, or one it
// waits for and does not get (Dovecot's haproxy = yes listener closes
// without a greeting; its plain one reads the header as bad commands).
// proxyHintFor is proxyHeaderHint when err is what a listener that
// waits for a PROXY header (or one that got a header it did not expect)
// does to a greeting's reader: nothing until the deadline, or a close;
// "" when something answered (a BYE, a line too long).
func proxyHintFor(err error, u upstream.Dialer) string {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) {
		return proxyHeaderHint(u)
	}
	return ""
}

func proxyHeaderHint(u upstream.Dialer) string {
	tu, ok := u.(*upstream.TCP)
	if !ok {
		return ""
	}
	if tu.ProxyHeader == 0 {
		return "; if this listener expects a PROXY header (Dovecot: haproxy = yes), set upstream.proxy_protocol"
	}
	return "; if this listener does not expect a PROXY header (Dovecot: no haproxy = yes), set upstream.proxy_protocol = \"\", " +
		"and imapgate's address must be in haproxy_trusted_networks"
}

// probeCaps reads a greeting, sends CAPABILITY and LOGOUT, and returns the
// capabilities of the CAPABILITY response (or of the greeting's code).
func probeCaps(r *bufio.Reader, write func([]byte) error) ([][]byte, error) {
	line, err := readLine(r, upstreamMaxLine)
	if err != nil {
		return nil, fmt.Errorf("no greeting: %w", err)
	}
	if !hasPrefixFold(trimCRLF(line), "* OK") {
		return nil, fmt.Errorf("unexpected greeting %.60q", trimCRLF(line))
	}
	if err := write([]byte("imapgate-probe1 CAPABILITY\r\nimapgate-probe2 LOGOUT\r\n")); err != nil {
		return nil, err
	}
	var caps [][]byte
	for {
		line, err := readLine(r, upstreamMaxLine)
		if err != nil {
			return nil, fmt.Errorf("reading CAPABILITY: %w", err)
		}
		text := trimCRLF(line)
		if start, end := capRange(text); start >= 0 {
			caps = capFields(text[start:end])
		}
		if kind, _ := classify(text, "imapgate-probe1"); kind == respTagged {
			if caps == nil {
				return nil, errors.New("no capabilities in the answer to CAPABILITY")
			}
			return caps, nil
		}
	}
}
