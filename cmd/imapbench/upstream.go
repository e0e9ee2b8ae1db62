package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"

	"imapgate/internal/sock"
)

// fastUpstream is the plaintext IMAP server every peer proxies to: just
// enough IMAP for the scenarios, as cheap as possible, so the figures are
// the proxies'.
type fastUpstream struct {
	ln    net.Listener
	fetch []byte // the FETCH response: a 1 MiB literal
}

func startUpstream() (*fastUpstream, error) {
	ln, err := sock.Listen("127.0.0.1:0") // plain TCP, as the peers' upstream
	if err != nil {
		return nil, err
	}
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-\r\n"), (1<<20)/66+1)[:1<<20]
	u := &fastUpstream{ln: ln, fetch: append(append([]byte(fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n", len(body))), body...), ")\r\n"...)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	return u, nil
}

func (u *fastUpstream) addr() string { return u.ln.Addr().String() }

func (u *fastUpstream) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 512)
	c.Write([]byte("* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] bench upstream ready\r\n"))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		cmd, _, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(cmd) {
		case "LOGOUT":
			c.Write([]byte("* BYE bye\r\n" + tag + " OK LOGOUT done\r\n"))
			return
		case "IDLE":
			c.Write([]byte("+ idling\r\n"))
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			c.Write([]byte(tag + " OK IDLE done\r\n"))
		case "FETCH":
			c.Write(u.fetch)
			c.Write([]byte(tag + " OK FETCH done\r\n"))
		default:
			c.Write([]byte(tag + " OK " + cmd + " done\r\n"))
		}
	}
}
