package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShellVarsSourcingSemantics(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "imapd")
	b := filepath.Join(dir, "imapd-ssl")
	os.WriteFile(a, []byte(`##NAME: MAXDAEMONS:0
# comment
MAXDAEMONS=40
MAXPERIP=20
IMAP_CAPABILITY="IMAP4rev1 UIDPLUS IDLE"
IMAP_CAPABILITY_TLS="$IMAP_CAPABILITY AUTH=PLAIN"
LITERAL='$NOT expanded'
BRACED="${MAXPERIP}x"
ESCAPED="a \"q\" \$x"
TRAILING=value # comment
echo not an assignment
`), 0o644)
	os.WriteFile(b, []byte("MAXPERIP=50\nSSLPORT=993\nTLS_CERTFILE=/etc/courier/imapd.pem\n"), 0o644)
	vars, from, err := ShellVars(CourierFiles(b)...)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"MAXDAEMONS": "40", "MAXPERIP": "50", "IMAP_CAPABILITY_TLS": "IMAP4rev1 UIDPLUS IDLE AUTH=PLAIN",
		"LITERAL": "$NOT expanded", "BRACED": "20x", "ESCAPED": `a "q" $x`, "TRAILING": "value",
	} {
		if vars[k] != want {
			t.Errorf("%s = %q, want %q", k, vars[k], want)
		}
	}
	if !strings.HasSuffix(from["MAXPERIP"], "imapd-ssl:1") {
		t.Errorf("MAXPERIP from %s, want imapd-ssl (last assignment wins)", from["MAXPERIP"])
	}
	os.WriteFile(a, []byte("BROKEN=\"no end\n"), 0o644)
	if _, _, err := ShellVars(a); err == nil || !strings.Contains(err.Error(), "imapd:1") {
		t.Errorf("unterminated quote: %v", err)
	}
}

func TestApplyCourierWithOverridesAndAccessFile(t *testing.T) {
	dir := t.TempDir()
	access := filepath.Join(dir, "imapaccess")
	os.WriteFile(access, []byte("192.0.2\tdeny\n198.51.100.7\tallow,MAXCPERIP=200,FOO=bar\n:2001:0db8:0001\tdeny\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "imapd"), []byte("MAXDAEMONS=40\nMAXPERIP=20\nIMAPACCESSFILE="+access+"\n"), 0o644)
	ssl := filepath.Join(dir, "imapd-ssl")
	os.WriteFile(ssl, []byte("SSLPORT=127.0.0.1.993,::1.993\nSSLADDRESS=0\nTLS_CERTFILE=/etc/courier/imapd.pem\nIMAP_TLS_REQUIRED=1\n"), 0o644)

	c, err := Parse("imapgate.toml", "[limits]\nmax_connections = 500\n")
	if err != nil {
		t.Fatal(err)
	}
	warnings, err := c.ApplyCourier(ssl)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate("t"); err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxConnections != 500 || c.Origin("limits.max_connections") != "file" {
		t.Errorf("imapgate's own file must win: %d from %s", c.Limits.MaxConnections, c.Origin("limits.max_connections"))
	}
	if c.Limits.MaxPerIP != 20 || !strings.Contains(c.Origin("limits.max_per_ip"), "imapd:2 MAXPERIP") {
		t.Errorf("max_per_ip %d from %s", c.Limits.MaxPerIP, c.Origin("limits.max_per_ip"))
	}
	if c.Limits.MaxPreauthPerIP != 10 {
		t.Errorf("preauth %d", c.Limits.MaxPreauthPerIP)
	}
	if c.Listen.Address != "127.0.0.1:993" || c.TLS.Cert != "/etc/courier/imapd.pem" || !c.TLS.CourierSNI {
		t.Errorf("listen %q cert %q sni %v", c.Listen.Address, c.TLS.Cert, c.TLS.CourierSNI)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "IMAP_TLS_REQUIRED=1") {
		t.Errorf("warnings %q", warnings)
	}
	l := c.Limits
	if len(l.Deny) != 2 || l.Deny[0].String() != "192.0.2.0/24" || l.Deny[1].String() != "2001:db8:1::/48" {
		t.Errorf("deny %v", l.Deny)
	}
	if len(l.Override) != 1 || l.Override[0].CIDR.String() != "198.51.100.7/32" || l.Override[0].MaxPerIP == nil || *l.Override[0].MaxPerIP != 200 {
		t.Errorf("overrides %+v", l.Override)
	}
}

func TestCourierListen(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"993", "0"}:                   ":993",
		{"993", "192.0.2.1"}:           "192.0.2.1:993",
		{"::1.993,127.0.0.1.993", "0"}: "[::1]:993",
	} {
		if got, err := courierListen(in[0], in[1]); err != nil || got != want {
			t.Errorf("courierListen(%q, %q) = %q, %v; want %q", in[0], in[1], got, err, want)
		}
	}
}

// Debian's own files, where courier is installed (CI installs it).
func TestDebianCourierFiles(t *testing.T) {
	const ssl = "/etc/courier/imapd-ssl"
	if _, err := os.Stat(ssl); err != nil {
		t.Skip("courier-imap not installed here (integration/courier/setup.sh install)")
	}
	vars, _, err := ShellVars(CourierFiles(ssl)...)
	if err != nil {
		t.Fatal(err)
	}
	if vars["TLS_CERTFILE"] == "" || vars["SSLPORT"] == "" || vars["MAXPERIP"] == "" {
		t.Fatalf("Debian's files gave %v", vars)
	}
	if !strings.Contains(vars["IMAP_CAPABILITY_TLS"], "AUTH=PLAIN") || strings.Contains(vars["IMAP_CAPABILITY_TLS"], "$") {
		t.Errorf("IMAP_CAPABILITY_TLS not expanded: %q", vars["IMAP_CAPABILITY_TLS"])
	}
}

// Courier's MAXPERIP and MAXDAEMONS raised for imapgate's own plain TCP
// forward (README, In front of courier, step 3) are no limits for
// clients: taking them says so, with where they came from (a fresh
// admin's trial imported 5000 for both without a word).
func TestApplyCourierWarnsOfRaisedLimits(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "imapd"), []byte("MAXDAEMONS=5000\nMAXPERIP=5000\n"), 0o644)
	c := Default()
	warnings, err := c.ApplyCourier(filepath.Join(dir, "imapd"))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "imapd:1: MAXDAEMONS=5000, taken as limits.max_connections, is above table.max (4096)") ||
		!strings.Contains(warnings[1], "imapd:2: MAXPERIP=5000, taken as limits.max_per_ip, is above table.max (4096)") {
		t.Errorf("warnings %q", warnings)
	}
	// Values a client limit can have, or set in imapgate's own file: no warning.
	c, err = Parse("imapgate.toml", "[limits]\nmax_connections = 5000\n")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "imapd"), []byte("MAXDAEMONS=5000\nMAXPERIP=20\n"), 0o644)
	if warnings, err = c.ApplyCourier(filepath.Join(dir, "imapd")); err != nil || len(warnings) != 0 {
		t.Errorf("warnings %q, %v", warnings, err)
	}
}
