package config

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ShellVars reads courier's configuration files (/etc/courier/imapd,
// imapd-ssl) the way its start scripts do: with `set -a` and `.`, so each
// file is plain shell assignments. KEY=value, KEY="…" (with $VAR and ${VAR}
// expanded, \ escapes) and KEY='…' (literal) are understood; # starts a
// comment; the last assignment wins; later files see earlier files' values.
// Lines that are not assignments (sysconftool's ##NAME markers, commands)
// are ignored. vars maps each name to its value; from to "file:line".
func ShellVars(files ...string) (vars, from map[string]string, err error) {
	vars, from = map[string]string{}, map[string]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("courier config: %w", err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			name, value, ok, err := shellAssign(line, vars)
			if err != nil {
				return nil, nil, fmt.Errorf("%s:%d: %w", f, i+1, err)
			}
			if ok {
				vars[name] = value
				from[name] = fmt.Sprintf("%s:%d", f, i+1)
			}
		}
	}
	return vars, from, nil
}

func isNameChar(c byte, first bool) bool {
	return c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (!first && c >= '0' && c <= '9')
}

// shellAssign parses one line; ok is false for a line that assigns nothing.
func shellAssign(line string, vars map[string]string) (name, value string, ok bool, err error) {
	s := strings.TrimLeft(line, " \t")
	s = strings.TrimPrefix(s, "export ")
	i := 0
	for i < len(s) && isNameChar(s[i], i == 0) {
		i++
	}
	if i == 0 || i >= len(s) || s[i] != '=' {
		return "", "", false, nil
	}
	name, s = s[:i], s[i+1:]
	var b strings.Builder
	for j := 0; j < len(s); j++ {
		switch c := s[j]; c {
		case ' ', '\t':
			return name, b.String(), true, nil
		case '#':
			if j == 0 {
				return name, "", true, nil
			}
			b.WriteByte(c)
		case '\'':
			end := strings.IndexByte(s[j+1:], '\'')
			if end < 0 {
				return "", "", false, fmt.Errorf("%s: unterminated single quote (courier's files must not continue lines)", name)
			}
			b.WriteString(s[j+1 : j+1+end])
			j += end + 1
		case '"':
			j++
			for ; j < len(s) && s[j] != '"'; j++ {
				switch {
				case s[j] == '\\' && j+1 < len(s) && strings.IndexByte("$`\"\\", s[j+1]) >= 0:
					j++
					b.WriteByte(s[j])
				case s[j] == '$':
					j = expand(s, j, &b, vars)
				default:
					b.WriteByte(s[j])
				}
			}
			if j >= len(s) {
				return "", "", false, fmt.Errorf("%s: unterminated double quote (courier's files must not continue lines)", name)
			}
		case '\\':
			if j+1 < len(s) {
				j++
				b.WriteByte(s[j])
			}
		case '$':
			j = expand(s, j, &b, vars)
		default:
			b.WriteByte(c)
		}
	}
	return name, b.String(), true, nil
}

// expand writes the value of $NAME or ${NAME} starting at s[j] and returns
// the index of its last byte.
func expand(s string, j int, b *strings.Builder, vars map[string]string) int {
	if j+1 < len(s) && s[j+1] == '{' {
		end := strings.IndexByte(s[j+2:], '}')
		if end >= 0 {
			b.WriteString(vars[s[j+2:j+2+end]])
			return j + 2 + end
		}
	}
	k := j + 1
	for k < len(s) && isNameChar(s[k], k == j+1) {
		k++
	}
	if k == j+1 {
		b.WriteByte('$')
		return j
	}
	b.WriteString(vars[s[j+1:k]])
	return k - 1
}

// CourierFiles returns the files courier's start script for file sources,
// in order: imapd-ssl's script sources imapd first, so imapd-ssl's values
// win for port 993.
func CourierFiles(file string) []string {
	if filepath.Base(file) == "imapd-ssl" {
		if imapd := filepath.Join(filepath.Dir(file), "imapd"); fileExists(imapd) {
			return []string{imapd, file}
		}
	}
	return []string{file}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// ApplyCourier takes MAXDAEMONS, MAXPERIP, SSLPORT/SSLADDRESS, TLS_CERTFILE
// and the access file (IMAPACCESSFILE) from courier's files as defaults for
// every key c's own file did not set, and records where each came from. It
// returns warnings for settings imapgate cannot take over as they are.
func (c *Config) ApplyCourier(file string) (warnings []string, err error) {
	vars, from, err := ShellVars(CourierFiles(file)...)
	if err != nil {
		return nil, err
	}
	if c.origin == nil {
		c.origin = map[string]string{}
	}
	take := func(key, v string, set func(string) error) error {
		val, ok := vars[v]
		if !ok || c.IsSet(key) {
			return nil
		}
		if err := set(val); err != nil {
			return fmt.Errorf("%s: %s=%q: %w", from[v], v, val, err)
		}
		c.origin[key] = "courier " + from[v] + " " + v
		return nil
	}
	atoi := func(dst *int) func(string) error {
		return func(s string) error {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 0 {
				return fmt.Errorf("not a count")
			}
			*dst = n
			return nil
		}
	}
	errs := []error{
		take("limits.max_connections", "MAXDAEMONS", atoi(&c.Limits.MaxConnections)),
		take("limits.max_per_ip", "MAXPERIP", atoi(&c.Limits.MaxPerIP)),
		take("listen.address", "SSLPORT", func(s string) error {
			a, err := courierListen(s, vars["SSLADDRESS"])
			c.Listen.Address = a
			return err
		}),
		take("tls.cert", "TLS_CERTFILE", func(s string) error {
			c.TLS.Cert, c.TLS.Key, c.TLS.CourierSNI = s, "", true
			return nil
		}),
	}
	for _, e := range errs {
		if e != nil {
			return nil, e
		}
	}
	// Courier's limits raised for imapgate's own plain TCP forward (every
	// session from one address) are no limits for clients.
	for _, t := range []struct {
		key, v string
		n      int
	}{{"limits.max_connections", "MAXDAEMONS", c.Limits.MaxConnections}, {"limits.max_per_ip", "MAXPERIP", c.Limits.MaxPerIP}} {
		if strings.HasPrefix(c.origin[t.key], "courier ") && t.n > c.Table.Max {
			warnings = append(warnings, fmt.Sprintf("%s: %s=%d, taken as %s, is above table.max (%d): raised so that courier "+
				"takes imapgate's forwarded sessions, it is no limit for clients; set %s in imapgate's own file", from[t.v], t.v, t.n, t.key, c.Table.Max, t.key))
		}
	}
	if l := &c.Limits; !c.IsSet("limits.max_preauth_per_ip") && l.MaxPerIP > 0 && l.MaxPreauthPerIP > l.MaxPerIP {
		l.MaxPreauthPerIP = l.MaxPerIP
		c.setOrigin("limits.max_preauth_per_ip", "default, lowered to max_per_ip")
	}
	if vars["IMAP_TLS_REQUIRED"] == "1" {
		warnings = append(warnings, fmt.Sprintf("%s: IMAP_TLS_REQUIRED=1: courier's plain port will refuse LOGIN from imapgate (LOGINDISABLED); set it to 0 there, or use upstream TLS", from["IMAP_TLS_REQUIRED"]))
	}
	if src := vars["IMAPACCESSFILE"]; src != "" && !c.IsSet("limits.deny") && !c.IsSet("limits.override") {
		acc, err := ReadCourierAccess(src)
		if err != nil {
			if !os.IsNotExist(err) {
				return nil, err
			}
			warnings = append(warnings, fmt.Sprintf("access file %s not found; no allow/deny entries taken", src))
		} else {
			c.Limits.Deny = append(c.Limits.Deny, acc.Deny...)
			c.Limits.Override = append(c.Limits.Override, acc.Overrides...)
			c.origin["limits.deny"] = "courier access file " + src
			c.origin["limits.override"] = "courier access file " + src
		}
	}
	return warnings, nil
}

// courierListen turns SSLPORT (a comma list of port or ip.port, split at
// the last dot) and SSLADDRESS (0 for all) into host:port, taking the first
// entry.
func courierListen(ports, address string) (string, error) {
	first := strings.TrimSpace(strings.Split(ports, ",")[0])
	host, port := address, first
	if i := strings.LastIndexByte(first, '.'); i >= 0 {
		host, port = first[:i], first[i+1:]
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", fmt.Errorf("no port in %q", first)
	}
	if host == "0" || host == "" {
		host = ""
	}
	return netJoin(host, port), nil
}

func netJoin(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// CourierAccess is what imapgate takes from courier's access file.
type CourierAccess struct {
	Deny      []Prefix
	Overrides []Override // allow,MAXCPERIP=n
}

// ReadCourierAccess reads courier's text access file (IMAPACCESSFILE: a
// file, or a directory of files): lines "<prefix><TAB><action>", where the
// prefix is an IPv4 address or a shorter octet-boundary prefix ("192.68.0"
// is a /24), an IPv6 prefix in courier's form (":2002:c0a8", zero-padded
// 16-bit groups), or "*"; the action is "deny" or "allow[,VAR=value…]",
// of which MAXCPERIP=n becomes a max_per_ip override. Other variables are
// courier's business and are ignored.
func ReadCourierAccess(src string) (*CourierAccess, error) {
	files := []string{src}
	if st, err := os.Stat(src); err != nil {
		return nil, err
	} else if st.IsDir() {
		entries, err := os.ReadDir(src)
		if err != nil {
			return nil, err
		}
		files = files[:0]
		for _, e := range entries {
			if !e.IsDir() {
				files = append(files, filepath.Join(src, e.Name()))
			}
		}
		sort.Strings(files)
	}
	acc := &CourierAccess{}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimRight(sc.Text(), "\r")
			if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			addr, action, ok := strings.Cut(line, "\t")
			if !ok {
				fh.Close()
				return nil, fmt.Errorf("%s:%d: want <address><TAB><action>, got %q", f, n, line)
			}
			prefixes, err := courierPrefix(strings.TrimSpace(addr))
			if err != nil {
				fh.Close()
				return nil, fmt.Errorf("%s:%d: %w", f, n, err)
			}
			if err := acc.add(prefixes, strings.TrimSpace(action)); err != nil {
				fh.Close()
				return nil, fmt.Errorf("%s:%d: %w", f, n, err)
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return acc, nil
}

func (acc *CourierAccess) add(prefixes []netip.Prefix, action string) error {
	parts := strings.Split(action, ",")
	switch parts[0] {
	case "deny":
		for _, p := range prefixes {
			acc.Deny = append(acc.Deny, Prefix{p})
		}
	case "allow":
		for _, kv := range parts[1:] {
			k, v, _ := strings.Cut(kv, "=")
			if k != "MAXCPERIP" {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("MAXCPERIP=%q is not a count", v)
			}
			for _, p := range prefixes {
				acc.Overrides = append(acc.Overrides, Override{CIDR: Prefix{p}, MaxPerIP: &n})
			}
		}
	default:
		return fmt.Errorf("action must be allow or deny, got %q", action)
	}
	return nil
}

// courierPrefix parses courier's address syntax.
func courierPrefix(s string) ([]netip.Prefix, error) {
	if s == "*" {
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, nil
	}
	if strings.HasPrefix(s, ":") {
		groups := strings.Split(s[1:], ":")
		if len(groups) > 8 {
			return nil, fmt.Errorf("IPv6 prefix %q has more than 8 groups", s)
		}
		var b [16]byte
		for i, g := range groups {
			v, err := strconv.ParseUint(g, 16, 16)
			if err != nil || len(g) != 4 {
				return nil, fmt.Errorf("IPv6 prefix %q: courier writes zero-padded 4-digit groups", s)
			}
			b[2*i], b[2*i+1] = byte(v>>8), byte(v)
		}
		return []netip.Prefix{netip.PrefixFrom(netip.AddrFrom16(b), 16*len(groups))}, nil
	}
	octets := strings.Split(s, ".")
	if len(octets) > 4 {
		return nil, fmt.Errorf("IPv4 prefix %q has more than 4 octets", s)
	}
	var b [4]byte
	for i, o := range octets {
		v, err := strconv.ParseUint(o, 10, 8)
		if err != nil {
			return nil, fmt.Errorf("IPv4 prefix %q: bad octet %q", s, o)
		}
		b[i] = byte(v)
	}
	return []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4(b), 8*len(octets))}, nil
}
