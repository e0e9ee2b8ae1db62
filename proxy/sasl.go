package proxy

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
)

// saslExchange follows one AUTHENTICATE exchange from the client's side:
// it learns the user name from the responses of the mechanisms that carry
// one, and keeps the responses (the credentials) only until the result is
// known, to recognise a retry of the same credentials. Nothing here is
// ever logged but the user name and the mechanism.
type saslExchange struct {
	mech      string // upper-cased
	step      int    // client responses seen
	user      string
	cancelled bool
	secret    []byte // the client's responses, base64 as sent; cleared by wipe
}

// maxSASLSecret bounds what is kept of the responses: enough for any
// password or token a client sends in practice; past it the rest is not
// part of the retry fingerprint.
const maxSASLSecret = 8 << 10

// response records the client's next response (base64 as sent, or "=" for
// an empty initial response, RFC 4959), learning the user name if this is
// the response that carries it.
func (x *saslExchange) response(line []byte) {
	line = trimCRLF(line)
	step := x.step
	x.step++
	if room := maxSASLSecret - len(x.secret); room > 0 {
		x.secret = append(x.secret, line[:min(len(line), room)]...)
		x.secret = append(x.secret, 0)
	}
	if x.user != "" || string(line) == "=" {
		return
	}
	raw, err := decodeBase64(line)
	if err != nil {
		return
	}
	defer clear(raw)
	if u, err := saslUser(x.mech, step, raw); err == nil {
		x.user = u
	}
}

// wipe clears the credentials kept for the retry fingerprint.
func (x *saslExchange) wipe() {
	clear(x.secret)
	x.secret = nil
}

func decodeBase64(b []byte) ([]byte, error) {
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(raw, b)
	if err != nil {
		clear(raw)
		return nil, fmt.Errorf("bad base64: %w", errBadSyntax)
	}
	return raw[:n], nil
}

// saslUser returns the user name that the decoded client response number
// step of mechanism mech names, for the mechanisms that carry one:
//
//   - PLAIN (RFC 4616), response 0: authzid NUL authcid NUL passwd. The
//     authentication identity is the user, as courier logs it: it is the
//     one whose password is being tried.
//   - LOGIN (draft-murchison-sasl-login), response 0: the user name.
//   - XOAUTH2 (Google's), response 0: "user=" user ^A "auth=Bearer " token ^A ^A.
//   - OAUTHBEARER (RFC 7628 §3.1), response 0: a GS2 header "n,a=" user ","
//     then key/value pairs; "=2C" and "=3D" escape "," and "=" (RFC 5801).
//
// Other mechanisms and steps return errBadSyntax.
func saslUser(mech string, step int, raw []byte) (string, error) {
	if step != 0 {
		return "", errBadSyntax
	}
	switch mech {
	case "PLAIN":
		parts := bytes.SplitN(raw, []byte{0}, 3)
		if len(parts) != 3 || len(parts[1]) == 0 {
			return "", fmt.Errorf("SASL PLAIN: want authzid NUL authcid NUL passwd: %w", errBadSyntax)
		}
		return string(parts[1]), nil
	case "LOGIN":
		if len(raw) == 0 || bytes.IndexByte(raw, 0) >= 0 {
			return "", fmt.Errorf("SASL LOGIN: empty user name: %w", errBadSyntax)
		}
		return string(raw), nil
	case "XOAUTH2":
		first, _, _ := bytes.Cut(raw, []byte{1})
		u, ok := bytes.CutPrefix(first, []byte("user="))
		if !ok || len(u) == 0 {
			return "", fmt.Errorf("SASL XOAUTH2: no user= field: %w", errBadSyntax)
		}
		return string(u), nil
	case "OAUTHBEARER":
		return gs2AuthzID(raw)
	}
	return "", errBadSyntax
}

// gs2AuthzID returns the authzid of a GS2 header (RFC 5801 §4):
// gs2-cb-flag "," ["a=" saslname] ",".
func gs2AuthzID(raw []byte) (string, error) {
	fields := bytes.SplitN(raw, []byte(","), 3)
	if len(fields) < 3 {
		return "", fmt.Errorf("GS2 header: %w", errBadSyntax)
	}
	a, ok := bytes.CutPrefix(fields[1], []byte("a="))
	if !ok || len(a) == 0 {
		return "", fmt.Errorf("GS2 header: no authzid: %w", errBadSyntax)
	}
	s := string(a)
	if strings.Contains(strings.NewReplacer("=2C", "", "=3D", "").Replace(s), "=") {
		return "", fmt.Errorf("GS2 header: bad escape in authzid: %w", errBadSyntax)
	}
	return strings.NewReplacer("=2C", ",", "=3D", "=").Replace(s), nil
}
