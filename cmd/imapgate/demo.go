package main

import (
	"fmt"
	"io"
	"net"

	"imapgate/config"
)

// demoAddress is where -demo listens unless the file says otherwise.
const demoAddress = "127.0.0.1:9993"

// applyDemo makes the demo supply the certificate (generated) and the
// upstream (in-memory, demo/demo); the file, if any, supplies the rest.
func applyDemo(cfg *config.Config) {
	if !cfg.IsSet("listen.address") {
		cfg.Listen.Address = demoAddress
	}
	cfg.Upstream.Mode = "tcp"
	cfg.Upstream.Address = "embedded"
	cfg.Upstream.ProxyProtocol = ""
	cfg.Upstream.TLS = false
	cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.SNI = "", "", nil
}

func printDemo(w io.Writer, addr string) {
	host, port, _ := net.SplitHostPort(addr)
	fmt.Fprintf(w, `
imapgate demo: IMAPS on %[1]s, account demo / demo (in memory), self-signed certificate.
Try it:
  curl -k --url 'imaps://%[1]s/' -u demo:demo                  # list mailboxes
  curl -k --url 'imaps://%[1]s/INBOX;UID=1' -u demo:demo       # read a message
  openssl s_client -quiet -connect %[1]s                      # then: a LOGIN demo demo
  python3 -c 'import imaplib,ssl; c=imaplib.IMAP4_SSL("%[2]s", %[3]s, ssl_context=ssl._create_unverified_context()); print(c.login("demo","demo")); print(c.select("INBOX"))'
Log lines (courier's format) follow on stderr. Stop with Ctrl-C.

`, addr, host, port)
}
