package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/rueidis"
)

// What -check calls a configuration error and what a warning: refused
// credentials, missing rights, TLS that fails and answers that stay
// wrong are errors; a Redis that does not answer (or not yet: loading,
// a cluster that is down) is a warning.
func TestKindOf(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tt := range []struct {
		err  error
		want ProbeKind
	}{
		{errors.New("WRONGPASS invalid username-password pair or user is disabled."), ProbeAuth},
		{errors.New("NOAUTH HELLO must be called with the client already authenticated"), ProbeAuth},
		{errors.New("NOPERM this user has no permissions to run the 'evalsha' command"), ProbeRights},
		{errors.New("NOPERM this user has no permissions to access one of the keys used as arguments"), ProbeRights},
		{errors.New("LOADING Redis is loading the dataset in memory"), ProbeUnreachable},
		{errors.New("CLUSTERDOWN The cluster is down"), ProbeUnreachable},
		{errors.New("MASTERDOWN Link with MASTER is down"), ProbeUnreachable},
		{errors.New("READONLY You can't write against a read only replica."), ProbeConfig},
		{errors.New("ERR unknown command 'sentinel'"), ProbeConfig},
		{errors.New("received unknown message type: 72"), ProbeConfig},
		{fmt.Errorf("dial: %w", x509.UnknownAuthorityError{}), ProbeConfig},
		{&tls.CertificateVerificationError{Err: errors.New("x")}, ProbeConfig},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, ProbeConfig},
		{refused, ProbeUnreachable},
		// a unix socket this user may not open (mode 700, another owner)
		{&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}, ProbeConfig},
		// a TLS port that wants a client certificate
		{&net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, ProbeConfig},
		// a reset alone is no proof of a mismatch (transport looks further)
		{&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, ProbeUnreachable},
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, ProbeUnreachable},
		{&net.DNSError{Err: "no such host", Name: "redis.example"}, ProbeUnreachable},
		{context.DeadlineExceeded, ProbeUnreachable},
		{os.ErrDeadlineExceeded, ProbeUnreachable},
		{io.EOF, ProbeUnreachable},
	} {
		if got := kindOf(tt.err); got != tt.want {
			t.Errorf("kindOf(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// A NOPERM names the rule to add: the command, the keys under the
// prefix, the channel.
func TestACLRule(t *testing.T) {
	k := newKeys("mx")
	for msg, want := range map[string]string{
		"NOPERM this user has no permissions to run the 'evalsha' command":                 "+evalsha",
		"NOPERM this user has no permissions to run the 'cluster|slots' command":           "+cluster|slots",
		"NOPERM this user has no permissions to access one of the keys used as arguments":  "~{mx}:*",
		"NOPERM this user has no permissions to access one of the channels used as argume": "&{mx}:ev",
		"ERR The user executing the script can't run this command or subcommand script: x": "",
		"NOPERM something new": "(NOPERM something new)",
	} {
		if got := aclRule(msg, k); got != want {
			t.Errorf("aclRule(%q) = %q, want %q", msg, got, want)
		}
	}
	e := missingRights("imapgate", []string{"~{mx}:*", "+evalsha", "~{mx}:*", "&{mx}:ev"})
	if !slices.Equal(e.Missing, []string{"&{mx}:ev", "+evalsha", "~{mx}:*"}) || e.Kind != ProbeRights {
		t.Errorf("missing %q, kind %d", e.Missing, e.Kind)
	}
	if want := "ACL SETUSER imapgate &{mx}:ev +evalsha ~{mx}:*"; !strings.Contains(e.Error(), want) {
		t.Errorf("%q lacks %q", e, want)
	}
}

// The messages say who refused and what to change, and never quote a
// password, even one Redis or the network repeated.
func TestProbeMessages(t *testing.T) {
	copt, err := ParseURL("redis://imapgate:s3cret@10.0.0.5:26379?master_set=mx&sentinel_username=sentinel&sentinel_password=t0ps3cret")
	if err != nil {
		t.Fatal(err)
	}
	p := &prober{copt: copt, k: newKeys("imapgate"), user: "imapgate"}
	sentinel := side{who: "the sentinel at 10.0.0.5:26379", creds: "sentinel_username and sentinel_password", sentinel: true}
	for _, tt := range []struct {
		s    side
		err  error
		kind ProbeKind
		want []string
	}{
		{p.redis(), errors.New("WRONGPASS invalid username-password pair or user is disabled."), ProbeAuth,
			[]string{"the master mx (through the sentinels) refused user imapgate", "the URL's user and password"}},
		{sentinel, errors.New("WRONGPASS invalid username-password pair or user is disabled."), ProbeAuth,
			[]string{"the sentinel at 10.0.0.5:26379 refused user sentinel", "sentinel_username and sentinel_password"}},
		{sentinel, errors.New("NOAUTH HELLO must be called with the client already authenticated"), ProbeAuth,
			[]string{"requires a user and password (NOAUTH): give sentinel_username and sentinel_password"}},
		{p.redis(), errors.New("dial tcp 10.0.0.5:6379: i/o timeout (s3cret t0ps3cret)"), ProbeUnreachable,
			[]string{"did not answer", "a node would start on local limits"}},
		{p.redis(), errors.New("NOPERM this user has no permissions to run the 'hello' command"), ProbeRights,
			[]string{"refused user imapgate (connecting: NOPERM", "add +hello to its ACL"}},
		{p.redis(), errors.New("READONLY You can't write against a read only replica."), ProbeConfig,
			[]string{"is a replica", "name the master"}},
		{p.redis(), errors.New("ERR DB index is out of range"), ProbeConfig,
			[]string{"has no such database", "below the server's databases setting"}},
	} {
		e := p.describe(tt.s, "connecting", tt.err)
		if e.Kind != tt.kind {
			t.Errorf("%v: kind %d, want %d", tt.err, e.Kind, tt.kind)
		}
		for _, w := range tt.want {
			if !strings.Contains(e.Error(), w) {
				t.Errorf("%q lacks %q", e, w)
			}
		}
		if strings.Contains(e.Error(), "s3cret") {
			t.Errorf("%q quotes a password", e)
		}
	}
}

// The mistakes that leave a replica on local limits for good say what
// to change: a unix socket this user may not open, a server that wants a
// client certificate, one whose certificate does not verify.
func TestProbeMessagesTransport(t *testing.T) {
	copt, err := ParseURL("unix://imapgate:s3cret@/run/redis/redis-server.sock")
	if err != nil {
		t.Fatal(err)
	}
	unix := &prober{copt: copt, k: newKeys("imapgate"), user: "imapgate", unix: true}
	copt, err = ParseURL("rediss://imapgate:s3cret@10.0.0.5:6379")
	if err != nil {
		t.Fatal(err)
	}
	tcp := &prober{copt: copt, k: newKeys("imapgate"), user: "imapgate"}
	for _, tt := range []struct {
		p    *prober
		err  error
		want string
	}{
		{unix, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)},
			"Redis at /run/redis/redis-server.sock: permission denied on the socket (connecting: dial unix: connect: permission denied): " +
				"add the user imapgate runs as to the socket's group (adduser imapgate redis) or fix its mode"},
		{tcp, &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")},
			"Redis at 10.0.0.5:6379 wants a client certificate (connecting: remote error: tls: certificate required), " +
				"which imapgate does not send: set tls-auth-clients no"},
		{tcp, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}},
			"Redis at 10.0.0.5:6379: its certificate does not verify (connecting: tls: failed to verify certificate: " +
				"x509: certificate signed by unknown authority): give the CA that signed it in cluster.tls_ca_file"},
	} {
		e := tt.p.describe(tt.p.redis(), "connecting", tt.err)
		if e.Kind != ProbeConfig || !strings.Contains(e.Error(), tt.want) {
			t.Errorf("kind %d, %q\nwant kind %d, %q", e.Kind, e, ProbeConfig, tt.want)
		}
	}
}

// A URL Probe cannot use is a configuration error, named once:
// -check puts "cluster.redis: " before it.
func TestProbeBadURL(t *testing.T) {
	_, err := Probe(context.Background(), Options{URL: "redis://u:pw@h:1/abc", Node: "t"})
	var pe *ProbeError
	if !errors.As(err, &pe) || pe.Kind != ProbeConfig || strings.Contains(err.Error(), "cluster.redis") ||
		!strings.Contains(err.Error(), "want a database number") {
		t.Fatalf("err = %v, want a ProbeConfig about the path, without the key", err)
	}
}

// The probe sends every command imapgate sends: those of the scripts
// (redis.call) and those sent by the client (cl.B().X()), but for the
// four it checks apart.
func TestProbeCoversEveryCommand(t *testing.T) {
	probed := map[string]bool{"eval": true, "evalsha": true, "publish": true, "subscribe": true}
	// The zero Builder is one for slot 0, the empty key's: the names are
	// what counts here.
	var b rueidis.Builder
	for _, c := range probeCommands(b, probeKeys{}) {
		probed[c.name] = true
	}
	files, _ := filepath.Glob("*.go")
	call := regexp.MustCompile(`redis\.call\('([A-Z]+)'`)
	built := regexp.MustCompile(`\.B\(\)\.([A-Z][a-z]+)\(\)`)
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "probe.go" {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, re := range []*regexp.Regexp{call, built} {
			for _, m := range re.FindAllStringSubmatch(string(src), -1) {
				n++
				if name := strings.ToLower(m[1]); !probed[name] {
					t.Errorf("%s sends %s, which the probe does not check", f, name)
				}
			}
		}
	}
	if n < 50 {
		t.Fatalf("found %d commands in the sources; the patterns no longer match them", n)
	}
}

func TestParseClusterNodes(t *testing.T) {
	text := `07c3 127.0.0.1:16391@26391 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:16392@26392 master - 0 1426238317239 2 connected 5461-10922 [5500->-292f]
292f 127.0.0.1:16393@26393,redis-3 master - 0 1426238316232 3 connected 10923-16383
6ec2 127.0.0.1:16394@26394 slave 07c3 0 1426238316232 1 connected
824f 127.0.0.1:16395@26395 slave 67ed 0 1426238316232 2 connected
e7d1 127.0.0.1:16396@26396 slave 292f 0 1426238316232 3 connected
a1b2 127.0.0.1:16397@26397 master,fail - 0 0 4 disconnected
`
	for slot, owner := range map[int]string{0: "127.0.0.1:16391", 5460: "127.0.0.1:16391", 5461: "127.0.0.1:16392",
		5500: "127.0.0.1:16392", 16383: "127.0.0.1:16393"} {
		tp := parseClusterNodes(text, slot)
		if tp.masters != 3 || tp.replicas != 3 || tp.owner != owner {
			t.Errorf("slot %d: %+v, want 3 masters, 3 replicas, owner %s", slot, tp, owner)
		}
	}
	nodes := ParseClusterNodes(text)
	if len(nodes) != 7 || nodes[2].Addr != "127.0.0.1:16393" || nodes[4].Master != "67ed" || !nodes[4].Has("slave") ||
		len(nodes[1].Slots) != 1 || !nodes[1].Serves(10922) || nodes[1].Serves(10923) || nodes[3].Serves(0) {
		t.Errorf("ParseClusterNodes: %+v", nodes)
	}
}

// WRONGPASS is explained for the credentials given: a password that is
// Redis's own error code does not hide which error it is (the code is
// read before the message is masked), and a user given without a
// password is told so, not to check a password it never gave.
func TestProbeWrongpass(t *testing.T) {
	for url, want := range map[string]string{
		"redis://imapgate:WRONGPASS@10.0.0.5:6379": "refused user imapgate and its password",
		"redis://imapgate@10.0.0.5:6379":           "refused user imapgate without a password",
	} {
		copt, err := ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		p := &prober{copt: copt, k: newKeys("imapgate"), user: "imapgate"}
		e := p.describe(p.redis(), "connecting", errors.New("WRONGPASS invalid username-password pair or user is disabled."))
		if e.Kind != ProbeAuth || !strings.Contains(e.Error(), want) {
			t.Errorf("%s: describe = %v (kind %d), want %q", url, e, e.Kind, want)
		}
	}
}
