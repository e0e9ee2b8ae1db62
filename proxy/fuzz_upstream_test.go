package proxy

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzUpstreamParse runs every parser that reads the upstream's bytes over
// arbitrary input: the greeting and capability rewrite, tagged results,
// the probe's reader and the relay's response tracker. The upstream is
// treated as hostile as a client: nothing may panic, and the capability
// rewrite must keep to its contract. The seed corpus runs in every go
// test; `go test -fuzz FuzzUpstreamParse ./proxy/` fuzzes.
func FuzzUpstreamParse(f *testing.F) {
	for _, s := range []string{
		"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] Courier-IMAP ready.\r\n",
		"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot ready.\r\n",
		"* OK \xde[CAPABILITY IMAP4rev1 ID] hi\r\n",
		"\xb5[CAPABILITY ",
		"* CAPABILITY IMAP4rev1 ID\r\nimapgate-probe1 OK done\r\n",
		"a NO [LIMIT] Maximum number of connections from user+IP exceeded\r\n",
		"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed\r\n",
		"* 1 FETCH (BODY[] {13}\r\n+ Ready\r\nxx)\r\na OK\r\n",
		"+ Ready for literal data\r\na2 NO [TOOBIG]\r\n",
		"a OK [CAPABILITY IMAP4rev1 STARTTLS] done\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, line := range bytes.Split(b, []byte("\n")) {
			line = trimCRLF(line)
			checkRewriteCaps(t, line)
			classify(line, "a")
			res := classifyLogin(line, "a", false)
			if res.reason == "" {
				t.Fatalf("classifyLogin(%q): empty reason", line)
			}
			if st, code := taggedStatus(line, "a"); st == "" && code != "" {
				t.Fatalf("taggedStatus(%q): code %q without a status", line, code)
			}
		}
		probeCaps(bufio.NewReaderSize(bytes.NewReader(b), 64), func([]byte) error { return nil })
		var tr cmdTracker
		tr.scanClient([]byte("a APPEND INBOX {5}\r\n"))
		tr.scanServer(b)
		tr.scanClient(b)
		tr.scanServer(b)
		tr.loggedOut()
	})
}
