package admin

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"imapgate/conntable"
	"imapgate/kernel"
	"imapgate/limiter"
)

func newTestServer(t *testing.T, token string) (*Server, *int) {
	t.Helper()
	table, err := conntable.New(conntable.Config{Max: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reloads := 0
	return New(Options{Table: table, Top: NewTop(4), Gatherer: prometheus.NewRegistry(), Token: token,
		Reload: func() error { reloads++; return nil }}), &reloads
}

func TestStateChangesNeedLocalOrToken(t *testing.T) {
	s, reloads := newTestServer(t, "s3cret")
	for _, tt := range []struct {
		remote, auth string
		want         int
	}{
		{"127.0.0.1:5000", "", 200},
		{"[::1]:5000", "", 200},
		{"@", "", 200}, // unix socket
		{"192.0.2.7:5000", "", 403},
		{"192.0.2.7:5000", "Bearer wrong", 403},
		{"192.0.2.7:5000", "Bearer s3cret", 200},
		{"192.0.2.7:5000", "bearer s3cret", 200}, // the scheme is case-insensitive
		{"192.0.2.7:5000", "Bearer s3cre", 403},
		{"192.0.2.7:5000", "Bearer s3crett", 403},
		{"192.0.2.7:5000", "Bearer ", 403},
		{"192.0.2.7:5000", "Basic s3cret", 403},
		{"192.0.2.7:5000", "s3cret", 403},
	} {
		r := httptest.NewRequest("POST", "/reload", nil)
		r.RemoteAddr = tt.remote
		if tt.auth != "" {
			r.Header.Set("Authorization", tt.auth)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != tt.want {
			t.Errorf("POST /reload from %s (%q): %d, want %d", tt.remote, tt.auth, w.Code, tt.want)
		}
	}
	if *reloads != 5 {
		t.Errorf("%d reloads ran, want 5", *reloads)
	}
	// Reading is allowed from anywhere the listener accepts.
	r := httptest.NewRequest("GET", "/status", nil)
	r.RemoteAddr = "192.0.2.7:5000"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"max": 8`) {
		t.Errorf("GET /status: %d %s", w.Code, w.Body)
	}
}

// Without a token configured, no Authorization header opens the door.
func TestNoTokenNoRemoteChanges(t *testing.T) {
	s, reloads := newTestServer(t, "")
	for _, auth := range []string{"", "Bearer ", "Bearer", "bearer  "} {
		r := httptest.NewRequest("POST", "/reload", nil)
		r.RemoteAddr = "192.0.2.7:5000"
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusForbidden {
			t.Errorf("no token, %q: %d", auth, w.Code)
		}
	}
	if *reloads != 0 {
		t.Errorf("%d reloads ran", *reloads)
	}
}

// The token is compared in constant time: the comparison goes through
// crypto/subtle, and no == or != touches the token (a timing test would
// be flaky; this guards the property).
func TestTokenComparedInConstantTime(t *testing.T) {
	f, err := parser.ParseFile(gotoken.NewFileSet(), "server.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	subtleCalls := 0
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			if x, ok := n.X.(*ast.Ident); ok && x.Name == "subtle" && n.Sel.Name == "ConstantTimeCompare" {
				subtleCalls++
			}
		case *ast.BinaryExpr:
			if n.Op != gotoken.EQL && n.Op != gotoken.NEQ {
				break
			}
			for _, side := range []ast.Expr{n.X, n.Y} {
				if mentionsToken(side) && !isEmptyString(n.X) && !isEmptyString(n.Y) {
					t.Errorf("server.go compares the token with %s", n.Op)
				}
			}
		}
		return true
	})
	if subtleCalls == 0 {
		t.Error("server.go does not use subtle.ConstantTimeCompare")
	}
}

func mentionsToken(e ast.Expr) bool {
	found := false
	ast.Inspect(e, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "Token" {
			found = true
		}
		return true
	})
	return found
}

func isEmptyString(e ast.Expr) bool {
	lit, ok := e.(*ast.BasicLit)
	return ok && lit.Value == `""`
}

func TestTopIsBoundedAndOrdered(t *testing.T) {
	top := NewTop(3)
	add := func(a string, n int) {
		for i := 0; i < n; i++ {
			top.refused.add(netip.MustParseAddr(a))
		}
	}
	add("192.0.2.1", 5)
	add("192.0.2.2", 3)
	add("::ffff:192.0.2.3", 1) // the same as 192.0.2.3
	add("192.0.2.3", 1)
	add("192.0.2.4", 1) // full: replaces the least counted (192.0.2.3, 2)
	got := top.refused.top(10)
	if len(got) != 3 || got[0] != (Count{"192.0.2.1", 5}) || got[1] != (Count{"192.0.2.2", 3}) || got[2] != (Count{"192.0.2.4", 3}) {
		t.Fatalf("top = %v", got)
	}
	if len(top.refused.top(1)) != 1 {
		t.Fatal("n not applied")
	}
	add("192.0.2.4", 4) // a run: read before any other address ends it
	if got := top.refused.top(1); got[0] != (Count{"192.0.2.4", 7}) {
		t.Fatalf("top during a run = %v", got)
	}
	add("192.0.2.4", 1)
	if got := top.refused.top(1); got[0] != (Count{"192.0.2.4", 8}) {
		t.Fatalf("top after a read mid-run = %v", got)
	}
}

// A flood from many addresses stays bounded and still finds the address
// that was refused most.
func TestTopUnderAManyAddressFlood(t *testing.T) {
	top := NewTop(16)
	heavy := netip.MustParseAddr("198.51.100.9")
	for i := 0; i < 5000; i++ {
		top.refused.add(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if i%10 == 0 {
			top.refused.add(heavy)
		}
	}
	got := top.refused.top(0)
	if len(got) > 16 || got[0].Addr != heavy.String() {
		t.Fatalf("%d tracked, top %v", len(got), got[0])
	}
}

// Every change made through the endpoint is logged with who asked, so the
// log tells a manual ban from a failed-login one (a fresh admin found
// ctl ban, unban and kill left no line).
func TestChangesAreLogged(t *testing.T) {
	table, lim := tableAndLimiter(t)
	var lines []string
	s := New(Options{Table: table, Limiter: lim, Top: NewTop(4), Gatherer: prometheus.NewRegistry(),
		Logf: func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }})
	for _, q := range []string{
		"/ban?addr=192.0.2.0/24&for=2m",
		"/ban?addr=::ffff:198.51.100.7&user=bob&for=1h",
		"/unban?addr=192.0.2.5", // inside the banned network
		"/unban?addr=192.0.2.0/24",
		"/unban?addr=203.0.113.1",
		"/kill?addr=192.0.2.9",
	} {
		r := httptest.NewRequest("POST", q, nil)
		r.RemoteAddr = "127.0.0.1:5000"
		if q == "/kill?addr=192.0.2.9" {
			r.RemoteAddr = "@"
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("POST %s: %d %s", q, w.Code, w.Body)
		}
	}
	want := []*regexp.Regexp{
		regexp.MustCompile(`^imapgate: ctl: banned 192\.0\.2\.0/24 until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(2m0s\), asked from 127\.0\.0\.1:5000$`),
		regexp.MustCompile(`^imapgate: ctl: banned user bob on 198\.51\.100\.7 until \S+ \(1h0m0s\), asked from 127\.0\.0\.1:5000$`),
		regexp.MustCompile(`^imapgate: ctl: unban 192\.0\.2\.5: no ban to lift; the network 192\.0\.2\.0/24 is banned, asked from 127\.0\.0\.1:5000$`),
		regexp.MustCompile(`^imapgate: ctl: unbanned 192\.0\.2\.0/24, asked from 127\.0\.0\.1:5000$`),
		regexp.MustCompile(`^imapgate: ctl: unban 203\.0\.113\.1: no ban to lift, asked from 127\.0\.0\.1:5000$`),
		regexp.MustCompile(`^imapgate: ctl: killed 0 connections \(addr=192\.0\.2\.9\), asked from the local socket$`),
	}
	if len(lines) != len(want) {
		t.Fatalf("logged %q", lines)
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("line %d: %q, want %s", i, lines[i], re)
		}
	}
}

// A ban inside a network the kernel drops is dropped in the kernel too:
// /bans says so (it said "userspace" while the network's element stood
// for it).
func TestBanInsideADroppedNetworkIsInTheKernel(t *testing.T) {
	table, lim := tableAndLimiter(t)
	now := time.Now()
	if err := lim.Ban(limiter.Ban{Key: netip.MustParsePrefix("192.0.2.51/32"), Until: now.Add(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	net24 := netip.MustParsePrefix("192.0.2.0/24")
	s := New(Options{Table: table, Limiter: lim, Top: NewTop(4), Gatherer: prometheus.NewRegistry(),
		KernelMembers: func(time.Time) []kernel.Member {
			return []kernel.Member{{Prefix: net24, Until: now.Add(30 * time.Second), Reason: kernel.ReasonPrefixEscalation}}
		}})
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest("GET", "/bans", nil))
	var bans []BanInfo
	if err := json.Unmarshal(w.Body.Bytes(), &bans); err != nil {
		t.Fatal(err)
	}
	if len(bans) != 2 {
		t.Fatalf("bans %+v", bans)
	}
	for _, b := range bans {
		if !b.Kernel {
			t.Errorf("%+v not in the kernel, though %s is dropped there", b, net24)
		}
	}
}

// An empty table lists as [], not null, for scripts.
func TestConnsEmptyIsAnEmptyList(t *testing.T) {
	s, _ := newTestServer(t, "")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest("GET", "/conns", nil))
	if got := strings.TrimSpace(w.Body.String()); got != "[]" {
		t.Errorf("GET /conns on an empty table: %q, want []", got)
	}
}

// tableAndLimiter are a small table and a limiter without limits, for a
// Server to act on.
func tableAndLimiter(t *testing.T) (*conntable.Table, *limiter.Limiter) {
	t.Helper()
	table, err := conntable.New(conntable.Config{Max: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lim, err := limiter.New(limiter.Policy{IPv4Prefix: 24, IPv6Prefix: 64}, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return table, lim
}

// A ban on an exempt address is refused with the reason (it was listed
// and never enforced: exempt addresses are never refused), and a network
// ban over an exempt address says that address stays served.
func TestBanOfAnExemptAddress(t *testing.T) {
	table, err := conntable.New(conntable.Config{Max: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lim, err := limiter.New(limiter.Policy{IPv4Prefix: 24, IPv6Prefix: 64,
		Exempt: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("198.51.100.0/28")}}, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Table: table, Limiter: lim, Top: NewTop(4), Gatherer: prometheus.NewRegistry()})
	post := func(q string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", q, nil)
		r.RemoteAddr = "127.0.0.1:5000"
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	for _, q := range []string{"/ban?addr=192.0.2.10", "/ban?addr=::ffff:192.0.2.10&user=bob", "/ban?addr=198.51.100.3", "/ban?addr=198.51.100.0/29"} {
		w := post(q)
		if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), "is in limits.exempt") {
			t.Errorf("POST %s: %d %q, want 409 naming limits.exempt", q, w.Code, w.Body)
		}
	}
	if bans := lim.Bans(time.Now()); len(bans) != 0 {
		t.Errorf("bans made of exempt addresses: %+v", bans)
	}
	w := post("/ban?addr=192.0.2.0/24")
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	if w.Code != 200 || out["exempt"] != "not refused inside the ban: 192.0.2.10/32 (limits.exempt)" {
		t.Errorf("POST /ban of 192.0.2.0/24: %d %s, want 200 and the exempt address named", w.Code, w.Body)
	}
	if _, ok := out["known_good"]; ok {
		t.Errorf("the known-good note with the tier off: %s", w.Body)
	}
}

// A network ban says that known-good addresses inside it stay served
// (the limiter spares them, as the kernel's keep set does); an address
// ban does not.
func TestNetworkBanNamesTheKnownGoodSpared(t *testing.T) {
	table, err := conntable.New(conntable.Config{Max: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := limiter.Policy{IPv4Prefix: 24, IPv6Prefix: 64}
	p.KnownGood.MinUsers, p.KnownGood.Window = 3, time.Hour
	lim, err := limiter.New(p, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Table: table, Limiter: lim, Top: NewTop(4), Gatherer: prometheus.NewRegistry()})
	for q, want := range map[string]bool{"/ban?addr=203.0.113.0/24": true, "/ban?addr=203.0.113.9": false} {
		r := httptest.NewRequest("POST", q, nil)
		r.RemoteAddr = "127.0.0.1:5000"
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		var out map[string]any
		json.Unmarshal(w.Body.Bytes(), &out)
		note, ok := out["known_good"].(string)
		if w.Code != 200 || ok != want || ok && !strings.Contains(note, "ctl knowngood") {
			t.Errorf("POST %s: %d %s, want the known-good note: %v", q, w.Code, w.Body, want)
		}
	}
}
