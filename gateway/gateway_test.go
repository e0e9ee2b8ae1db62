package gateway

import (
	"testing"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/conntable"
	"imapgate/courierlog"
)

// A reload puts a whole checked configuration in force, or none of it.
func TestReloadAllOrNothing(t *testing.T) {
	cert, err := certs.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Upstream.Address = "embedded"
	g, err := New(cfg, Options{Log: courierlog.New(&courierlog.Memory{}, courierlog.Options{}), Certs: certs.NewStatic(cert)})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	defer g.Server.Close()

	next := *cfg
	next.Limits.MaxPerIP = 5
	next.Timeouts.Preauth = config.Duration(42e9)
	if err := g.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if g.Config() != &next || g.Limiter.Policy().Limits.MaxPerIP != 5 || g.Table.Config().Timeouts[conntable.Preauth] != 42e9 {
		t.Fatalf("reload not in force: max_per_ip %d, timeouts %v", g.Limiter.Policy().Limits.MaxPerIP, g.Table.Config().Timeouts)
	}

	bad := next
	bad.Limits.MaxPerIP = 7
	bad.Timeouts.Preauth = config.Duration(43e9)
	bad.Limits.IPv4Prefix = 0 // fails the policy check, after the rest was built
	if err := g.Reload(&bad); err == nil {
		t.Fatal("a bad policy was accepted")
	}
	restart := next
	restart.Upstream.Mode = "exec"
	if err := g.Reload(&restart); err == nil || err.Error() != "upstream.mode changed, which needs a restart" {
		t.Fatalf("upstream.mode changed without a restart, or said %v", err)
	}
	watch := next
	watch.Kernel.ConntrackWatch = config.Duration(3e9)
	watch.TLS.PostQuantum = !next.TLS.PostQuantum
	if err := g.Reload(&watch); err == nil || err.Error() != "tls.post_quantum, kernel.conntrack_watch changed, which needs a restart" {
		t.Fatalf("kernel.conntrack_watch and tls.post_quantum changed without a restart, or said %v", err)
	}
	silent := next
	silent.Timeouts.Silent = config.Duration(3e9)
	if err := g.Reload(&silent); err != nil || g.Table.Config().Silent != 3e9 {
		t.Fatalf("timeouts.silent not reloaded: %v, %v", err, g.Table.Config().Silent)
	}
	if err := g.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if g.Config() != &next || g.Limiter.Policy().Limits.MaxPerIP != 5 || g.Table.Config().Timeouts[conntable.Preauth] != 42e9 {
		t.Fatal("a failed reload changed something")
	}
}
