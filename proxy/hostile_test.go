package proxy_test

import (
	"strings"
	"testing"
)

// A broken or hostile upstream ends the session before login with a line
// in the log that says what it did, and the client hears BYE [UNAVAILABLE]
// at once instead of hanging until its pre-login timeout (a fresh admin
// found wrong tags and stray continuations left the client hanging for a
// minute, and over-long lines and a BYE greeting logged nothing but
// "Disconnected").
func TestHostileUpstreamIsLoggedAndCutOff(t *testing.T) {
	const greeting = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
	for _, tt := range []struct {
		name     string
		greeting string
		login    func(tag string) string // the answer to LOGIN
		client   string                  // what the client hears first
		log      string
		notLog   string
	}{
		{name: "BYE greeting", greeting: "* BYE Temporary problem, please try again later\r\n",
			client: "* BYE Temporary problem",
			log:    `refused the session at its greeting: "* BYE Temporary problem, please try again later"`},
		{name: "greeting line too long", greeting: strings.Repeat("x", 20<<10) + "\r\n",
			client: "* BYE [UNAVAILABLE]", log: "a line over 16384 bytes", notLog: "PROXY header"},
		{name: "wrong tag", greeting: greeting, login: func(string) string { return "zz OK welcome\r\n" },
			client: "* BYE [UNAVAILABLE]", log: `failed the session before login: a response that is neither untagged nor tagged a1: "zz OK welcome"`},
		{name: "stray continuation", greeting: greeting, login: func(string) string { return "+ go on\r\n" },
			client: "* BYE [UNAVAILABLE]", log: `failed the session before login: a continuation request ("+ go on") to a command sent whole`},
		{name: "line too long", greeting: greeting, login: func(tag string) string { return "* " + strings.Repeat("y", 20<<10) + "\r\n" },
			client: "* BYE [UNAVAILABLE]", log: "failed the session before login: a response line over 16384 bytes"},
		// A close without BYE is also how courier's imaplogin ends a
		// session at its login time limit: the client sees the close, as
		// from courier alone, and the log says who closed (it said
		// "upstream unavailable", which reads as an outage).
		{name: "closed", greeting: greeting, login: func(string) string { return "" },
			log: "closed the connection before login, after 0s and 1 commands, ip=[::ffff:127.0.0.1], port=[", notLog: "unavailable"},
		{name: "literal too large", greeting: greeting, login: func(string) string { return "* OK {100000}\r\n" },
			client: "* BYE [UNAVAILABLE]", log: "failed the session before login: a literal of 100000 bytes in a response (at most 65536)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := loginAnswering(t, tt.greeting, tt.login)
			p := startProxy(t, up.upstream(), proxyConfig{})
			c := dial(t, p.addr)
			if tt.login != nil {
				c.expect("* OK")
				c.send("a1 LOGIN bob secret\r\n")
			}
			if tt.client != "" {
				c.expect(tt.client)
			}
			c.expectEOF()
			waitLog(t, p, tt.log)
			if tt.notLog != "" && p.log.Contains(tt.notLog) {
				t.Errorf("log has %q: %q", tt.notLog, p.log.Lines())
			}
		})
	}
}

// loginAnswering is a fake upstream that sends greeting, answers LOGIN
// with login(tag) (an empty answer, or a nil login: it closes without a
// word) and any other command with OK.
func loginAnswering(t *testing.T, greeting string, login func(tag string) string) *upstreamScript {
	return fakeUpstream(t, func(u *upstreamConn) {
		u.send(greeting)
		for {
			l := u.read()
			if l == "" {
				return
			}
			tag, rest, _ := strings.Cut(l, " ")
			if strings.HasPrefix(rest, "LOGIN ") {
				if login == nil || login(tag) == "" {
					return
				}
				u.send(login(tag))
				continue
			}
			u.send(tag + " OK done\r\n")
		}
	})
}
