package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writePEM writes c as courier's one-file PEM (key first) and as separate
// cert and key files.
func writePEM(t *testing.T, dir, name string, c *tls.Certificate) (one, cert, key string) {
	t.Helper()
	all, err := PEM(c)
	if err != nil {
		t.Fatal(err)
	}
	one = filepath.Join(dir, name+".pem")
	os.WriteFile(one, all, 0o600)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	key = filepath.Join(dir, name+".key")
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert = filepath.Join(dir, name+".crt")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644)
	return one, cert, key
}

func mustSelfSigned(t *testing.T, names ...string) *tls.Certificate {
	c, err := SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadCourierOneFileAndSeparateFiles(t *testing.T) {
	dir := t.TempDir()
	one, cert, key := writePEM(t, dir, "imapd", mustSelfSigned(t, "mail.example.com"))
	for _, src := range []Source{{Cert: one}, {Cert: cert, Key: key}} {
		c, err := Load(src)
		if err != nil || c.Leaf.DNSNames[0] != "mail.example.com" {
			t.Fatalf("%v: %v", src, err)
		}
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	_, certA, _ := writePEM(t, dir, "a", mustSelfSigned(t, "a.example"))
	_, _, keyB := writePEM(t, dir, "b", mustSelfSigned(t, "b.example"))
	unreadable := filepath.Join(dir, "unreadable.pem")
	os.WriteFile(unreadable, []byte("x"), 0)
	tests := []struct {
		src  Source
		want string
	}{
		{Source{Cert: filepath.Join(dir, "missing.pem")}, "missing.pem"},
		{Source{Cert: certA}, "a.crt"},            // no key in the file
		{Source{Cert: certA, Key: keyB}, "b.key"}, // mismatched key
		{Source{Cert: certA, Key: filepath.Join(dir, "nokey")}, "nokey"},
	}
	if os.Geteuid() != 0 { // root reads mode-0 files
		tests = append(tests, struct {
			src  Source
			want string
		}{Source{Cert: unreadable}, "unreadable.pem"})
	}
	for _, tt := range tests {
		if _, err := Load(tt.src); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%v) = %v, want an error naming %s", tt.src, err, tt.want)
		}
	}
}

func TestSNISelectionAndReload(t *testing.T) {
	dir := t.TempDir()
	def, _, _ := writePEM(t, dir, "default", mustSelfSigned(t, "mail.example.com"))
	other, _, _ := writePEM(t, dir, "other", mustSelfSigned(t, "imap.example.org", "*.example.net"))
	s, err := NewStore([]Source{{Cert: def}, {Cert: other}})
	if err != nil {
		t.Fatal(err)
	}
	pick := func(name string) string {
		c, _ := s.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
		return c.Leaf.DNSNames[0]
	}
	for name, want := range map[string]string{
		"": "mail.example.com", "IMAP.example.org": "imap.example.org", "x.example.net": "imap.example.org",
		"unknown.example": "mail.example.com",
	} {
		if got := pick(name); got != want {
			t.Errorf("SNI %q -> %s, want %s", name, got, want)
		}
	}
	// Reloading a broken file keeps the old certificates.
	sources := []Source{{Cert: def}, {Cert: other}}
	os.WriteFile(other, []byte("garbage"), 0o600)
	if err := s.Replace(sources); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
	if pick("imap.example.org") != "imap.example.org" {
		t.Fatal("a failed reload changed the certificates")
	}
	// A good new file is served after reload.
	writePEM(t, dir, "default", mustSelfSigned(t, "new.example.com"))
	writePEM(t, dir, "other", mustSelfSigned(t, "imap.example.org"))
	if err := s.Replace(sources); err != nil {
		t.Fatal(err)
	}
	if pick("") != "new.example.com" {
		t.Fatal("reload did not pick up the new certificate")
	}
}

func TestCourierSNIFiles(t *testing.T) {
	dir := t.TempDir()
	base, _, _ := writePEM(t, dir, "imapd", mustSelfSigned(t, "mail.example.com"))
	all, _ := PEM(mustSelfSigned(t, "other.example.org"))
	os.WriteFile(base+".other.example.org", all, 0o600)
	os.WriteFile(base+".192.0.2.1", all, 0o600) // per-address file: not SNI
	srcs, err := CourierSNI(base)
	if err != nil || len(srcs) != 1 || !strings.HasSuffix(srcs[0].Cert, ".other.example.org") {
		t.Fatalf("CourierSNI = %v, %v", srcs, err)
	}
}

func TestServerConfigDefaults(t *testing.T) {
	s := NewStatic(mustSelfSigned(t, "localhost"))
	cfg := s.ServerConfig(0, false)
	if cfg.MinVersion != tls.VersionTLS12 || cfg.SessionTicketsDisabled || cfg.CurvePreferences[0] != tls.X25519 {
		t.Fatalf("min %x tickets disabled %v curves %v", cfg.MinVersion, cfg.SessionTicketsDisabled, cfg.CurvePreferences)
	}
	if pq := s.ServerConfig(0, true); pq.CurvePreferences[0] != tls.X25519MLKEM768 {
		t.Fatalf("post-quantum config curves %v", pq.CurvePreferences)
	}
}
