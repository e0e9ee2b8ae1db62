package gateway

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/conntable"
	"imapgate/courierlog"
)

// A reload puts a whole checked configuration in force, or none of it.
func TestReloadAllOrNothing(t *testing.T) {
	cfg := config.Default()
	cfg.Upstream.Address = "embedded"
	g := newGate(t, cfg)
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
	// The caller's restart-only settings come first, in the same refusal.
	if err := g.Reload(&restart, Changed{"[log]", true}, Changed{"[admin]", false}); err == nil ||
		err.Error() != "[log], upstream.mode changed, which needs a restart" {
		t.Fatalf("the caller's [log] not named with upstream.mode: %v", err)
	}
	pq := next
	pq.TLS.PostQuantum = !next.TLS.PostQuantum
	pq.Table.Buckets = 4096
	pq.Kernel.ConntrackWatch = config.Duration(3e9) // a reload applies it, but not with these
	if err := g.Reload(&pq); err == nil || err.Error() != "tls.post_quantum, table.buckets changed, which needs a restart" {
		t.Fatalf("tls.post_quantum and table.buckets changed without a restart, or said %v", err)
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

// A reload applies kernel.conntrack_watch: turned on, the status has
// figures at once; re-timed, one goroutine runs at the new interval; off,
// none runs and the status says so; Close ends it (TestMain checks that
// nothing outlives the tests).
func TestReloadConntrackWatch(t *testing.T) {
	cfg := config.Default()
	cfg.Upstream.Address = "embedded"
	cfg.Kernel.ConntrackWatch = 0
	g := newGate(t, cfg)
	defer g.Server.Close()
	root := t.TempDir() // a host's /proc and /sys, as far as the watch reads them
	for path, v := range map[string]string{"proc/sys/net/netfilter/nf_conntrack_count": "1000", "proc/sys/net/netfilter/nf_conntrack_max": "4096"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(path)), 0o755)
		os.WriteFile(filepath.Join(root, path), []byte(v+"\n"), 0o644)
	}
	g.kernel.conntrack.Root = root
	g.StartKernel(nil)
	check := func(every time.Duration, status string) {
		t.Helper()
		if got := g.kernel.conntrack.Interval(); got != every {
			t.Fatalf("watch every %v, want %v", got, every)
		}
		if s := g.KernelState(); s != "nftables off; host conntrack "+status {
			t.Fatalf("status %q, want host conntrack %s", s, status)
		}
		want := 0
		if every > 0 {
			want = 1
		}
		if n := watchGoroutines(want); n != want {
			t.Fatalf("%d watch goroutines with the watch every %v", n, every)
		}
	}
	check(0, "not watched")
	for _, every := range []time.Duration{10 * time.Second, 3 * time.Second, 0, time.Second} {
		next := *g.Config()
		next.Kernel.ConntrackWatch = config.Duration(every)
		if err := g.Reload(&next); err != nil {
			t.Fatal(err)
		}
		status := "1000 of 4096 entries (24%)"
		if every == 0 {
			status = "not watched"
		}
		check(every, status)
	}
	g.Close()
	if n := watchGoroutines(0); n != 0 {
		t.Fatalf("%d watch goroutines after Close", n)
	}
}

// watchGoroutines counts the conntrack watch's goroutines, waiting (5 s
// at most) for the count to be want: a stopped one may still be returning.
func watchGoroutines(want int) int {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		buf := make([]byte, 1<<20)
		n := strings.Count(string(buf[:runtime.Stack(buf, true)]), "kernel.(*ConntrackWatch).SetInterval.func")
		if n == want || time.Now().After(deadline) {
			return n
		}
	}
}

// newGate makes a Gate from cfg with a self-signed certificate and a log
// in memory.
func newGate(t *testing.T, cfg *config.Config) *Gate {
	t.Helper()
	cert, err := certs.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{Log: courierlog.New(&courierlog.Memory{}, courierlog.Options{}), Certs: certs.NewStatic(cert)})
	if err != nil {
		t.Fatal(err)
	}
	return g
}
