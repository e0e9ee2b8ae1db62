package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/google/nftables"

	"imapgate/internal/netnstest"
)

// Real-kernel tests of the whole daemon with [kernel] nftables = true, each
// in a network namespace of its own (netnstest), with its clients in a
// peer namespace behind a veth, as remote clients.

// peerLogin logs in from src in the peer namespace.
func peerLogin(d *daemon, peer *netnstest.Peer, src netip.Addr, user, pass string) (*imapclient.Client, error) {
	raw, err := peer.Dial(src, d.addr, time.Second)
	if err != nil {
		return nil, err
	}
	c := imapclient.New(tls.Client(raw, &tls.Config{InsecureSkipVerify: true}), nil)
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// A banned address is dropped in the kernel: its connect times out,
// imapgate's accept counter does not move, the rule counter does; it comes
// back when the ban expires, and at once with ctl unban. (spray_failures:
// three failed logins of one user ban the address itself; a user+address
// ban stays the limiter's alone and never enters the sets. Each failure
// has a password of its own: a retried password counts once.)
func TestRealNftablesBannedAddressNeverReachesImapgate(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 2)
	bad := peer.Sources[0]
	d := startForPeer(t, peer, `
[limits.auth_failures]
spray_failures = 3
ban_time = "3s"
delay = "0s"
max_delay = "0s"
[kernel]
nftables = true
`)
	d.waitLine("kernel nftables table inet imapgate on ports")
	ban := func(nth int) {
		t.Helper()
		for i := 0; i < 3; i++ {
			// A different wrong password each time: a retried one is one
			// failure, however many times it comes.
			if c, err := peerLogin(d, peer, bad, "demo", fmt.Sprintf("wrong-%d-%d", nth, i)); err == nil {
				c.Close()
				t.Fatal("a wrong password logged in")
			}
		}
		line := "kernel: dropping new connections from ::ffff:" + bad.String()
		d.waitLog(func(s string) bool { return strings.Count(s, line) >= nth })
	}
	ban(1)
	accepted, dropped := d.metric("imapgate_connections_accepted_total"), d.metric("imapgate_kernel_dropped_packets_total")
	if c, err := peer.Dial(bad, d.addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the banned address connected")
	}
	if got := d.metric("imapgate_connections_accepted_total"); got != accepted {
		t.Fatalf("imapgate accepted %v connections from the banned address", got-accepted)
	}
	if got := d.metric("imapgate_kernel_dropped_packets_total"); got <= dropped {
		t.Fatalf("the rule counter did not move (%v)", got)
	}
	if out := d.ctl("bans"); !strings.Contains(out, bad.String()) || !strings.Contains(out, "kernel (nftables)") {
		t.Fatalf("ctl bans:\n%s", out)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(d.get("/metrics"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics (kernel metrics included): %v\n%s", err, out)
		}
	} else if os.Getenv("CI") == "true" {
		t.Error("promtool missing in CI")
	}
	// Another address is served all along.
	if c, err := peerLogin(d, peer, peer.Sources[1], "demo", "demo"); err != nil {
		t.Fatalf("another address: %v", err)
	} else {
		c.Close()
	}
	// The ban expires (3 s): the element with it.
	time.Sleep(3 * time.Second)
	if c, err := peerLogin(d, peer, bad, "demo", "demo"); err != nil {
		t.Fatalf("after the ban expired: %v", err)
	} else {
		c.Close()
	}
	// Banned again, and lifted at once by ctl unban.
	ban(2)
	d.ctl("unban", bad.String())
	if c, err := peerLogin(d, peer, bad, "demo", "demo"); err != nil {
		t.Fatalf("right after ctl unban: %v", err)
	} else {
		c.Close()
	}
	d.waitLine("kernel: no longer dropping ::ffff:" + bad.String() + " (unbanned)")
	// A clean stop removes the table.
	d.cmd.Process.Signal(os.Interrupt)
	<-d.exit
	nc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := nc.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == "imapgate" {
			t.Fatal("table inet imapgate left after a clean stop")
		}
	}
}

// A flood of connections from one address over its limit escalates to a
// kernel drop; a client at its limit, refused a few times, does not.
func TestRealNftablesFloodEscalatesHonestClientDoesNot(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 2)
	flooder, honest := peer.Sources[0], peer.Sources[1]
	d := startForPeer(t, peer, `
[limits]
max_per_ip = 2
[limits.action]
max_per_ip = "close"
[kernel]
nftables = true
`)
	d.waitLine("kernel nftables table inet imapgate on ports")
	for _, src := range []netip.Addr{flooder, honest} {
		for i := 0; i < 2; i++ {
			c, err := peerLogin(d, peer, src, "demo", "demo")
			if err != nil {
				t.Fatalf("%s: session %d: %v", src, i, err)
			}
			defer c.Close()
		}
	}
	// The honest client tries a third session now and then: refused.
	for i := 0; i < 5; i++ {
		if c, err := peerLogin(d, peer, honest, "demo", "demo"); err == nil {
			c.Close()
			t.Fatal("a third session from the honest address was served")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The flooder hammers until the kernel drops it (bounded: 15 s).
	escalated := false
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if dropped(peer, flooder, d.addr) {
			escalated = true
			break
		}
	}
	if !escalated {
		t.Fatal("15 s of refused connections did not escalate")
	}
	d.waitLine("kernel: dropping new connections from ::ffff:" + flooder.String() + " for 30s")
	if strings.Contains(d.logText(), "kernel: dropping new connections from ::ffff:"+honest.String()) {
		t.Fatal("the honest client at its limit was dropped in the kernel")
	}
	if got := d.metric(`imapgate_kernel_additions_total{reason="escalation"}`); got != 1 {
		t.Fatalf("escalations counted: %v", got)
	}
}

// Without CAP_NET_ADMIN, [kernel] nftables = true costs one clear line at
// start, and the userspace limits work as ever.
func TestRealNftablesStartWithoutCapability(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal("setpriv (util-linux) is needed")
	}
	d := newDaemon(t)
	// User nobody runs a copy of the binary from, and writes its log to, a
	// directory it may use.
	os.Chmod(filepath.Dir(d.dir), 0o755)
	os.Chmod(d.dir, 0o777)
	os.Chmod(filepath.Join(d.dir, "imapd.pem"), 0o644)
	bin := filepath.Join(d.dir, "imapgate")
	b, _ := os.ReadFile(binary)
	os.WriteFile(bin, b, 0o755)
	d.start("[log]\noutput = \"file:"+d.log+"\"\n"+`
[limits]
max_per_ip = 1
[limits.action]
max_per_ip = "bye"
[kernel]
nftables = true
`, nil, func(c *exec.Cmd) {
		c.Args = append([]string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", bin}, c.Args[1:]...)
		c.Path = setpriv
	})
	d.waitLine("[kernel] nftables = true, but nftables cannot be used")
	if !strings.Contains(d.logText(), "CAP_NET_ADMIN") || !strings.Contains(d.logText(), "kernel nftables unavailable") {
		t.Fatalf("log:\n%s", d.logText())
	}
	c, err := d.login("127.0.0.1", "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := d.login("127.0.0.1", "demo", "demo"); err == nil {
		t.Fatal("max_per_ip 1 let a second session in")
	}
	d.waitLine("Maximum connection limit reached for ::ffff:127.0.0.1")

	// -check, as the unit's ExecStartPre runs it, says the same before a start.
	out, _ := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", bin,
		"-check", "-config", filepath.Join(d.dir, "imapgate.toml")).CombinedOutput()
	if !strings.Contains(string(out), "[kernel] nftables = true, but nftables cannot be used") || !strings.Contains(string(out), "CAP_NET_ADMIN") {
		t.Fatalf("-check without CAP_NET_ADMIN does not warn:\n%s", out)
	}
}

// inetTables lists the namespace's inet nftables tables.
func inetTables(t *testing.T) []string {
	t.Helper()
	nc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := nc.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

// reloadWith rewrites the daemon's config file, replacing old by new, and
// reloads it with ctl reload.
func (d *daemon) reloadWith(old, new string) (ctlOut string) {
	d.t.Helper()
	path := filepath.Join(d.dir, "imapgate.toml")
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), old) {
		d.t.Fatalf("%q not in the config:\n%s", old, b)
	}
	os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o644)
	s := d.ctl("reload")
	if !strings.Contains(s, "reloaded: true") {
		d.t.Fatalf("ctl reload: %s\nlog:\n%s", s, d.logText())
	}
	return s
}

// A reload applies [kernel]: on makes the table, a new name moves it (the
// old one goes), off removes it.
func TestRealNftablesReloadOnRenameOff(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	d := startDaemon(t, "[kernel]\nnftables = false\ntable = \"gate_a\"\n", nil, nil)
	if names := inetTables(t); len(names) != 0 {
		t.Fatalf("tables with nftables off: %v", names)
	}
	d.reloadWith("nftables = false", "nftables = true")
	d.waitLine("[kernel] reloaded: nftables table inet gate_a on ports")
	if names := inetTables(t); !slices.Equal(names, []string{"gate_a"}) {
		t.Fatalf("tables after turning nftables on: %v", names)
	}
	d.reloadWith(`table = "gate_a"`, `table = "gate_b"`)
	d.waitLine("[kernel] reloaded: nftables table inet gate_b on ports")
	if names := inetTables(t); !slices.Equal(names, []string{"gate_b"}) {
		t.Fatalf("tables after the rename: %v", names)
	}
	if s := d.ctl("status"); !strings.Contains(s, "kernel       nftables table inet gate_b on ports") {
		t.Fatalf("ctl status does not show the kernel path:\n%s", s)
	}
	d.reloadWith("nftables = true", "nftables = false")
	d.waitLine("[kernel] reloaded: nftables off")
	if names := inetTables(t); len(names) != 0 {
		t.Fatalf("tables after turning nftables off: %v", names)
	}
	if s := d.ctl("status"); !strings.Contains(s, "kernel       nftables off; host conntrack") {
		t.Fatalf("ctl status does not show the kernel path off:\n%s", s)
	}
}

// Two instances on one host with different kernel.table names keep a
// table each; stopping one leaves the other's.
func TestRealNftablesTwoGatewaysTwoTables(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	a := startDaemon(t, "[kernel]\nnftables = true\ntable = \"gate_one\"\n", nil, nil)
	a.waitLine("kernel nftables table inet gate_one on ports")
	b := startDaemon(t, "[kernel]\nnftables = true\ntable = \"gate_two\"\n", nil, nil)
	b.waitLine("kernel nftables table inet gate_two on ports")
	if names := inetTables(t); !slices.Equal(names, []string{"gate_one", "gate_two"}) {
		t.Fatalf("tables: %v", names)
	}
	// A third given a table name in use is refused it (it would have
	// replaced the first one's table with rules for its own port).
	c := startDaemon(t, "[kernel]\nnftables = true\ntable = \"gate_one\"\n", nil, nil)
	c.waitLine("table inet gate_one is in use by another imapgate in this network namespace")
	if names := inetTables(t); !slices.Equal(names, []string{"gate_one", "gate_two"}) {
		t.Fatalf("tables with the third running: %v", names)
	}
	// A reload renaming b's table to a's keeps b's: it had removed it
	// first and then found the new name taken, leaving b with none.
	// ctl says so (it said only "reloaded: true").
	out := b.reloadWith(`table = "gate_two"`, `table = "gate_one"`)
	if !strings.Contains(out, "not_applied: [[kernel] not reloaded: table inet gate_one is in use by another imapgate") {
		t.Errorf("ctl reload with [kernel] left as it was: %q", out)
	}
	b.waitLine("[kernel] not reloaded: table inet gate_one is in use by another imapgate")
	b.waitLine("imapgate: configuration reloaded, except: [kernel] not reloaded")
	if names := inetTables(t); !slices.Equal(names, []string{"gate_one", "gate_two"}) {
		t.Fatalf("tables after b's refused rename: %v", names)
	}
	a.cmd.Process.Signal(os.Interrupt)
	<-a.exit
	if names := inetTables(t); !slices.Equal(names, []string{"gate_two"}) {
		t.Fatalf("tables after one stopped: %v", names)
	}
	// c, which found gate_one taken, gets it at its next reload, [kernel]
	// unchanged.
	c.reloadWith("nftables = true", "nftables = true")
	c.waitLine("[kernel] reloaded: nftables table inet gate_one on ports")
	if names := slices.Sorted(slices.Values(inetTables(t))); !slices.Equal(names, []string{"gate_one", "gate_two"}) {
		t.Fatalf("tables after c's reload: %v", names)
	}
}

// A flood spread over the addresses of one /24 escalates the /24 in the
// kernel (logged, counted, listed by ctl bans); another address of that
// /24 is dropped with it, an exempt one still logs in.
func TestRealNftablesPrefixFloodSparesExempt(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 8) // 198.18.0.2 .. 198.18.0.9
	flood, bystander, exempt := peer.Sources[:6], peer.Sources[6], peer.Sources[7]
	d := startForPeer(t, peer, `
[limits]
max_per_ip = 1
exempt = ["`+exempt.String()+`"]
[limits.action]
max_per_ip = "close"
[kernel]
nftables = true
[kernel.escalation]
refusals = 10
prefix_addresses = 4
`)
	d.waitLine("kernel nftables table inet imapgate on ports")
	for _, src := range flood {
		c, err := peerLogin(d, peer, src, "demo", "demo") // holds its one slot
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		defer c.Close()
	}
	// Each flood address hammers until the kernel drops it (bounded).
	for _, src := range flood {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			if dropped(peer, src, d.addr) {
				break
			}
		}
	}
	d.waitLine("kernel: dropping new connections from 198.18.0.0/24 for ") // 30 s, less the time to the next Sync
	if c, err := peer.Dial(bystander, d.addr, time.Second); err == nil {
		c.Close()
		t.Fatal("another address of the dropped /24 connected")
	}
	c, err := peerLogin(d, peer, exempt, "demo", "demo")
	if err != nil {
		t.Fatalf("the exempt address inside the dropped /24: %v", err)
	}
	c.Close()
	if got := d.metric(`imapgate_kernel_additions_total{reason="prefix_escalation"}`); got != 1 {
		t.Fatalf("prefix escalations counted: %v", got)
	}
	if out := d.ctl("bans"); !strings.Contains(out, "198.18.0.0/24") || !strings.Contains(out, "prefix_escalation") {
		t.Fatalf("ctl bans:\n%s", out)
	}
}

// A network ban drops the network in the kernel and refuses it in user
// space, but not the known-good office inside it: its packets pass the
// keep set and the limiter spares it (a trial's office was let through by
// nftables and then refused as banned); a stranger of the network is
// dropped, and a ban of the office's own address refuses it.
func TestRealNftablesBannedNetworkSparesKnownGoodOffice(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 2) // 198.18.0.2, .3
	office, stranger := peer.Sources[0], peer.Sources[1]
	d := startForPeer(t, peer, "[limits.known_good]\nmin_users = 1\n[kernel]\nnftables = true\n")
	d.waitLine("kernel nftables table inet imapgate on ports")
	c, err := peerLogin(d, peer, office, "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if out := d.ctl("knowngood", office.String()); !strings.Contains(out, "known-good until") {
		t.Fatalf("ctl knowngood after the login:\n%s", out)
	}
	if out := d.ctl("ban", "198.18.0.0/24", "10m"); !strings.Contains(out, "known_good: not refused inside the ban") {
		t.Fatalf("ctl ban of the office's network:\n%s", out)
	}
	d.waitLine("kernel: dropping new connections from 198.18.0.0/24 for ")
	if !dropped(peer, stranger, d.addr) {
		t.Fatal("a stranger of the banned network was not dropped in the kernel")
	}
	for i := 0; i < 3; i++ {
		c, err := peerLogin(d, peer, office, "demo", "demo")
		if err != nil {
			t.Fatalf("login %d of the known-good office inside the banned network: %v", i, err)
		}
		defer c.Close()
	}
	d.ctl("ban", office.String(), "10m")
	if c, err := peerLogin(d, peer, office, "demo", "demo"); err == nil {
		c.Close()
		t.Fatal("the office logged in under a ban of its own address")
	}
	d.waitLine("Connection refused, address banned for ::ffff:" + office.String())
}

// startForPeer runs imapgate on the test's side of peer's veth, logging
// to its file, with extra configuration.
func startForPeer(t *testing.T, peer *netnstest.Peer, extra string) *daemon {
	t.Helper()
	d := newDaemon(t)
	d.listen = peer.LocalAddr.String() + ":0"
	d.start("[log]\noutput = \"file:"+d.log+"\"\n"+extra, nil, nil)
	return d
}

// dropped tries one connection from src to addr and reports whether the
// kernel dropped it (the connect timed out). A refusal before TLS is a
// reset, which may come before the connect returns or at the first read.
func dropped(peer *netnstest.Peer, src netip.Addr, addr string) bool {
	c, err := peer.Dial(src, addr, time.Second)
	if err != nil {
		return !errors.Is(err, syscall.ECONNRESET)
	}
	c.Read(make([]byte, 1))
	c.Close()
	return false
}

// A reload that changes [kernel] carries a flooder's escalation level into
// the new table, and so does turning nftables off and on again: each next
// drop is the next level's, in the log and in the element's own timeout
// in the kernel (1 s, then 2 s after a rename, then 4 s after off and on;
// without the carry, each would be 1 s again).
func TestRealNftablesReloadKeepsEscalationLevel(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 1)
	flooder := peer.Sources[0]
	d := startForPeer(t, peer, `
[limits]
max_per_ip = 1
[limits.action]
max_per_ip = "close"
[kernel]
nftables = true
table = "gate_a"
[kernel.escalation]
refusals = 10
first = "1s"
max = "1m0s"
`)
	d.waitLine("kernel nftables table inet gate_a on ports")
	c, err := peerLogin(d, peer, flooder, "demo", "demo") // holds its one slot
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	escalations := func() []string {
		var out []string
		for _, l := range strings.Split(d.logText(), "\n") {
			if strings.Contains(l, "kernel: dropping new connections from ::ffff:"+flooder.String()) && strings.Contains(l, " refusals in ") {
				out = append(out, l)
			}
		}
		return out
	}
	// escalate floods until the flooder's nth escalation, which must be
	// for want at level n, and returns its element's timeout in table.
	escalate := func(n int, want time.Duration, table string) time.Duration {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); len(escalations()) < n; {
			if time.Now().After(deadline) {
				t.Fatalf("no escalation %d; log:\n%s", n, d.logText())
			}
			if c, err := peer.Dial(flooder, d.addr, 300*time.Millisecond); err == nil {
				c.Read(make([]byte, 1)) // closed before TLS
				c.Close()
			}
		}
		l := escalations()[n-1]
		if !strings.Contains(l, fmt.Sprintf(" for %s (", want)) || !strings.HasSuffix(l, fmt.Sprintf(", level %d)", n)) {
			t.Fatalf("escalation %d: %q, want %s at level %d", n, l, want, n)
		}
		return elementTimeout(t, table, flooder)
	}
	escalate(1, time.Second, "gate_a")
	dropped := d.metric("imapgate_kernel_dropped_packets_total")
	d.reloadWith(`table = "gate_a"`, `table = "gate_b"`)
	d.waitLine("[kernel] reloaded: nftables table inet gate_b on ports")
	if got := escalate(2, 2*time.Second, "gate_b"); got <= time.Second || got > 2*time.Second {
		t.Fatalf("the element's timeout at level 2: %v, want 2s", got)
	}
	d.reloadWith("nftables = true", "nftables = false")
	d.waitLine("[kernel] reloaded: nftables off")
	d.reloadWith("nftables = false", "nftables = true")
	d.waitLine("[kernel] reloaded: nftables table inet gate_b on ports")
	if got := escalate(3, 4*time.Second, "gate_b"); got <= 2*time.Second || got > 4*time.Second {
		t.Fatalf("the element's timeout at level 3: %v, want 4s", got)
	}
	// The counters go on across the reloads: three escalations, each
	// counted once (a drop carried into the next table is not a new
	// one), and the packets dropped by the first table still counted.
	if got := d.metric(`imapgate_kernel_additions_total{reason="escalation"}`); got != 3 {
		t.Errorf("imapgate_kernel_additions_total{reason=\"escalation\"} = %v after three escalations across two reloads, want 3", got)
	}
	if got := d.metric("imapgate_kernel_dropped_packets_total"); got < dropped {
		t.Errorf("imapgate_kernel_dropped_packets_total went back from %v to %v across the reloads", dropped, got)
	}
}

// An address that becomes known-good while nftables is off is in the
// keep set as soon as it is turned on again: a dropped prefix of its never
// drops the office, though it logged in before the table existed.
func TestRealNftablesKnownGoodWhileOffIsKept(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	d := startDaemon(t, "[limits.known_good]\nmin_users = 1\n[kernel]\nnftables = false\ntable = \"gate_a\"\n", nil, nil)
	office := netip.MustParseAddr("127.0.60.1")
	c, err := d.login(office.String(), "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()
	if out := d.ctl("knowngood", office.String()); !strings.Contains(out, "known-good until") {
		t.Fatalf("ctl knowngood after the login:\n%s", out)
	}
	d.reloadWith("nftables = false", "nftables = true")
	d.waitLine("[kernel] reloaded: nftables table inet gate_a on ports")
	// The keep set is filled at the path's first Sync.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, ok := setElement(t, "gate_a", "keep4", office); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, known-good since a login while nftables was off, is not in the keep set", office)
		}
	}
}

// elementTimeout is the timeout a's element in table's ban4 was added
// with (the kernel's own record of it).
func elementTimeout(t *testing.T, table string, a netip.Addr) time.Duration {
	t.Helper()
	d, ok := setElement(t, table, "ban4", a)
	if !ok {
		t.Fatalf("%s not in %s's ban4", a, table)
	}
	return d
}

// setElement returns the timeout of a's element in table's set, and
// whether there is one.
func setElement(t *testing.T, table, set string, a netip.Addr) (time.Duration, bool) {
	t.Helper()
	nc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	s, err := nc.GetSetByName(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, set)
	if err != nil {
		t.Fatal(err)
	}
	els, err := nc.GetSetElements(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range els {
		if k, ok := netip.AddrFromSlice(e.Key); ok && k == a && !e.IntervalEnd {
			return e.Timeout, true
		}
	}
	return 0, false
}
