package proxy

import (
	"bufio"
	"strings"
	"testing"
)

// BenchmarkLoginPhaseScan is the scanner's work for one typical login
// phase: the upstream greeting and a CAPABILITY response rewritten, then a
// client's CAPABILITY, ID, LOGIN with quoted strings and AUTHENTICATE PLAIN
// with an initial response, each split into tag, name and arguments and the
// user extracted. Run: go test -run XXX -bench LoginPhaseScan -benchmem ./proxy/
func BenchmarkLoginPhaseScan(b *testing.B) {
	const client = "a1 CAPABILITY\r\n" +
		"a2 ID (\"name\" \"Thunderbird\" \"version\" \"128.3\")\r\n" +
		"a3 LOGIN \"alice@example.org\" \"correct horse battery staple\"\r\n" +
		"a4 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n"
	const greeting = "* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE STARTTLS LOGINDISABLED IDLE] Courier-IMAP ready.\r\n"
	const caps = "* CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT STARTTLS LOGINDISABLED IDLE AUTH=PLAIN\r\n"
	src := strings.NewReader(client)
	r := bufio.NewReaderSize(src, 8192)
	var out []byte
	b.SetBytes(int64(len(client) + len(greeting) + len(caps)))
	b.ReportAllocs()
	for b.Loop() {
		out, _ = rewriteCaps(out[:0], []byte(greeting))
		out, _ = rewriteCaps(out[:0], []byte(caps))
		src.Reset(client)
		r.Reset(src)
		for {
			line, err := readLine(r, 8192)
			if err != nil {
				break
			}
			if _, _, err := trailingLiteral(line); err != nil {
				b.Fatal(err)
			}
			_, name, args, err := parseArgs(line)
			if err != nil {
				b.Fatalf("%q: %v", line, err)
			}
			switch name {
			case "LOGIN":
				if u, err := loginUser(args); err != nil || u != "alice@example.org" {
					b.Fatalf("LOGIN user %q, %v", u, err)
				}
			case "AUTHENTICATE":
				x := saslExchange{mech: "PLAIN"}
				if x.response(args[1].val); x.user != "alice@example.org" {
					b.Fatalf("PLAIN user %q", x.user)
				}
				x.wipe()
			}
		}
	}
}
