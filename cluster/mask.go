package cluster

import (
	"net/url"
	"strings"
)

// maskSecrets replaces each occurrence of a secret in text that stands
// as a token of its own with "xxxxx". text is a message imapgate did not
// write (an error of Redis, a sentinel, the network or the client):
// what imapgate writes around it never holds a password (it names
// servers by address and URLs by RedactURL), and the words of a message
// may contain a short password ("a" in "password", "wrong" in "a wrong
// password") without quoting it. A server that quotes a password
// quotes it as an argument, between quotes, backticks or spaces (Redis
// 5 answers an unknown HELLO with "with args beginning with: `3`,
// `AUTH`, `user`, `password`"), so a quoted password is always bounded;
// its URL-escaped form too.
func maskSecrets(text string, secrets ...string) string {
	for _, s := range secrets {
		if s == "" {
			continue
		}
		inURL := strings.TrimPrefix(url.UserPassword("", s).String(), ":") // as a URL's userinfo holds it
		for _, form := range []string{s, inURL, url.QueryEscape(s)} {
			text = maskToken(text, form)
		}
	}
	return text
}

// maskToken masks the occurrences of s in text that no word character
// (letter, digit, "_", "-", any non-ASCII byte) continues on a side
// where s itself ends in one.
func maskToken(text, s string) string {
	var b strings.Builder
	for {
		i := strings.Index(text, s)
		if i < 0 {
			b.WriteString(text)
			return b.String()
		}
		end := i + len(s)
		bounded := (i == 0 || !wordByte(s[0]) || !wordByte(text[i-1])) &&
			(end == len(text) || !wordByte(s[len(s)-1]) || !wordByte(text[end]))
		if bounded {
			b.WriteString(text[:i])
			b.WriteString("xxxxx")
			text = text[end:]
		} else {
			b.WriteString(text[:i+1])
			text = text[i+1:]
		}
	}
}

func wordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c >= 0x80
}

// mask is maskSecrets with the passwords of the probe's URL.
func (p *prober) mask(text string) string {
	return maskSecrets(text, p.copt.Password, p.copt.Sentinel.Password)
}

// mask is maskSecrets with the passwords of the node's URL, for the
// errors it logs and shows.
func (c *Cluster) mask(err error) string {
	return maskSecrets(err.Error(), c.copt.Password, c.copt.Sentinel.Password)
}
