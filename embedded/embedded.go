// Package embedded runs go-imap's in-memory IMAP server inside the process
// as an upstream: the zero-setup demo's mail store and the test suite's
// default server. It listens on a private loopback port, so the proxy
// reaches it exactly as it reaches a real server.
package embedded

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"imapgate/internal/sock"
	"imapgate/upstream"
)

// Account is a user of the embedded server.
type Account struct {
	User, Password string
	Messages       []string // RFC 5322 messages for INBOX
}

// DemoAccounts is the demo's mailbox: demo / demo with a few messages.
func DemoAccounts() []Account {
	date := time.Now().UTC().Format(time.RFC1123Z)
	msg := func(i int, subject, body string) string {
		return "From: imapgate <postmaster@imapgate.example>\r\n" +
			"To: demo <demo@imapgate.example>\r\n" +
			"Subject: " + subject + "\r\n" +
			"Date: " + date + "\r\n" +
			fmt.Sprintf("Message-ID: <demo-%d@imapgate.example>\r\n", i) +
			"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
	}
	return []Account{{
		User: "demo", Password: "demo",
		Messages: []string{
			msg(1, "Welcome to imapgate", "This message was read through imapgate's TLS front door."),
			msg(2, "How limits look", "Refusals are logged in courier's format and counted by reason."),
			msg(3, "Next step", "Point [upstream] address at your courier on 127.0.0.1:143."),
		},
	}}
}

// Server is a running embedded IMAP server.
type Server struct {
	ln  net.Listener
	srv *imapserver.Server
}

// Start serves accounts on a private 127.0.0.1 port.
func Start(accounts []Account) (*Server, error) {
	mem := imapmemserver.New()
	for _, a := range accounts {
		u := imapmemserver.NewUser(a.User, a.Password)
		if err := u.Create("INBOX", nil); err != nil {
			return nil, fmt.Errorf("embedded: create INBOX: %w", err)
		}
		for _, m := range a.Messages {
			if _, err := u.Append("INBOX", literal{strings.NewReader(m), int64(len(m))}, &imap.AppendOptions{}); err != nil {
				return nil, fmt.Errorf("embedded: append: %w", err)
			}
		}
		mem.AddUser(u)
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps: imap.CapSet{imap.CapIMAP4rev1: {}},
		// The proxy has terminated TLS; the hop to here is in-process.
		InsecureAuth: true,
		Logger:       discardLogger{},
	})
	ln, err := sock.Listen("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("embedded: listen: %w", err)
	}
	go srv.Serve(ln)
	return &Server{ln: ln, srv: srv}, nil
}

// Addr is the server's loopback address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Upstream returns the proxy's view of the server.
func (s *Server) Upstream() upstream.Dialer { return dialer{s} }

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

type dialer struct{ s *Server }

func (u dialer) String() string { return "embedded" }

func (u dialer) Dial(ctx context.Context, _ upstream.Client) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.s.Addr())
	if err != nil {
		return nil, fmt.Errorf("embedded server: %w", err)
	}
	return c, nil
}

type literal struct {
	io.Reader
	size int64
}

func (l literal) Size() int64 { return l.size }

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
