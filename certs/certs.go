// Package certs loads the proxy's certificates, picks one per connection by
// SNI and reloads them without dropping sessions. It reads courier's
// TLS_CERTFILE layout (private key and chain in one PEM file, with
// per-name files beside it as FILE.domain) as well as separate cert and key
// files.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Source names one certificate: a PEM file with the chain, and the key's
// file; an empty Key means the key is in Cert (courier's TLS_CERTFILE).
type Source struct {
	Cert string
	Key  string
}

func (s Source) String() string {
	if s.Key == "" || s.Key == s.Cert {
		return s.Cert
	}
	return s.Cert + " + " + s.Key
}

// Load reads one certificate and its key, checks they match, and parses the
// leaf. Errors name the file.
func Load(s Source) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(s.Cert)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", s.Cert, err)
	}
	keyFile := s.Key
	keyPEM := certPEM
	if keyFile != "" && keyFile != s.Cert {
		if keyPEM, err = os.ReadFile(keyFile); err != nil {
			return nil, fmt.Errorf("key %s: %w", keyFile, err)
		}
	} else {
		keyFile = s.Cert
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w", s.Cert, keyFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.Cert, err)
		}
	}
	return &c, nil
}

// CourierSNI returns the per-name files courier reads beside a TLS_CERTFILE:
// FILE.example.com for SNI name example.com. Files named after an IP
// address (FILE.192.0.2.1, courier's per-local-address certificates) are
// not SNI names and are skipped.
func CourierSNI(certFile string) ([]Source, error) {
	matches, err := filepath.Glob(certFile + ".*")
	if err != nil {
		return nil, fmt.Errorf("courier SNI files for %s: %w", certFile, err)
	}
	var out []Source
	for _, m := range matches {
		suffix := strings.TrimPrefix(m, certFile+".")
		if net.ParseIP(suffix) != nil || strings.HasSuffix(suffix, "~") || strings.HasSuffix(suffix, ".bak") {
			continue
		}
		out = append(out, Source{Cert: m})
	}
	return out, nil
}

// set is one immutable generation of certificates.
type set struct {
	def    *tls.Certificate
	byName map[string]*tls.Certificate // lower-case DNS names, "*.example.com" for wildcards
	all    []*tls.Certificate
}

func build(sources []Source) (*set, error) {
	if len(sources) == 0 {
		return nil, errors.New("no certificate configured")
	}
	s := &set{byName: make(map[string]*tls.Certificate)}
	for _, src := range sources {
		c, err := Load(src)
		if err != nil {
			return nil, err
		}
		if s.def == nil {
			s.def = c
		}
		s.all = append(s.all, c)
		names := c.Leaf.DNSNames
		if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
			names = []string{c.Leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = strings.ToLower(n)
			if _, dup := s.byName[n]; !dup { // first configured wins
				s.byName[n] = c
			}
		}
	}
	return s, nil
}

func (s *set) pick(name string) *tls.Certificate {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return s.def
	}
	if c, ok := s.byName[name]; ok {
		return c
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c, ok := s.byName["*"+name[i:]]; ok {
			return c
		}
	}
	return s.def
}

// Store serves certificates to TLS handshakes; Replace swaps them whole.
type Store struct {
	cur atomic.Pointer[set]
}

// NewStore loads sources; the first is the default for clients without SNI
// or with an unknown name.
func NewStore(sources []Source) (*Store, error) {
	s := &Store{}
	if err := s.Replace(sources); err != nil {
		return nil, err
	}
	return s, nil
}

// NewStatic serves certificates already in memory (the demo's generated one).
func NewStatic(certs ...*tls.Certificate) *Store {
	st := &set{def: certs[0], byName: map[string]*tls.Certificate{}, all: certs}
	for _, c := range certs {
		for _, n := range c.Leaf.DNSNames {
			st.byName[strings.ToLower(n)] = c
		}
	}
	s := &Store{}
	s.cur.Store(st)
	return s
}

// Replace loads a new list of sources; on error nothing changes.
func (s *Store) Replace(sources []Source) error {
	st, err := build(sources)
	if err != nil {
		return err
	}
	s.cur.Store(st)
	return nil
}

// GetCertificate is tls.Config.GetCertificate.
func (s *Store) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load().pick(hello.ServerName), nil
}

// Expiry returns each certificate's first name and NotAfter, for metrics.
func (s *Store) Expiry() map[string]time.Time {
	out := make(map[string]time.Time)
	for _, c := range s.cur.Load().all {
		name := c.Leaf.Subject.CommonName
		if len(c.Leaf.DNSNames) > 0 {
			name = c.Leaf.DNSNames[0]
		}
		out[name] = c.Leaf.NotAfter
	}
	return out
}

// TLSVersion parses "1.2" or "1.3".
func TLSVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("TLS version must be \"1.2\" or \"1.3\", got %q", s)
}

// ServerConfig returns the TLS configuration for the client side: minimum
// version minVersion (TLS 1.2 by default), certificates from s, session
// tickets on (crypto/tls rotates the ticket keys itself). postQuantum
// offers the hybrid X25519MLKEM768 key exchange first; without it the
// classic X25519 and P-256 are used, as OpenSSL 3.0 (HAProxy, nginx,
// courier's GnuTLS) does, which costs about a fifth less CPU per handshake.
func (s *Store) ServerConfig(minVersion uint16, postQuantum bool) *tls.Config {
	if minVersion == 0 {
		minVersion = tls.VersionTLS12
	}
	cfg := &tls.Config{
		MinVersion:       minVersion,
		GetCertificate:   s.GetCertificate,
		NextProtos:       []string{"imap"},
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
	}
	if postQuantum {
		cfg.CurvePreferences = append([]tls.CurveID{tls.X25519MLKEM768}, cfg.CurvePreferences...)
	}
	return cfg
}

// CAPool reads the PEM certificates of file into a pool, for verifying a
// server imapgate connects to (an upstream, Redis). Errors name the file.
func CAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificates found", file)
	}
	return pool, nil
}
