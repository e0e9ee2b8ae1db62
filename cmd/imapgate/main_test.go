package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"imapgate/certs"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imapgate-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "imapgate")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a running imapgate process.
type daemon struct {
	t     *testing.T
	cmd   *exec.Cmd
	dir   string
	log   string
	admin string // unix socket path
	addr  string // client listener
	// listen is listen.address; "" means 127.0.0.1:0.
	listen string
	exit   chan error
	// text reads the log; nil: the file at log.
	text func() string
}

// writeCert writes a self-signed certificate for name in courier's one-file
// layout and returns its path.
func writeCert(t *testing.T, path, name string) {
	t.Helper()
	c, err := certs.SelfSigned(name, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := certs.PEM(c)
	tmp := path + ".tmp"
	os.WriteFile(tmp, pem, 0o600)
	os.Rename(tmp, path)
}

// startDaemon runs imapgate with a config made of extra plus a log file and
// an admin socket; the embedded server is the upstream.
func startDaemon(t *testing.T, extra string, args []string, setup func(*exec.Cmd)) *daemon {
	t.Helper()
	d := newDaemon(t)
	d.start(fmt.Sprintf("[log]\noutput = \"file:%s\"\n", d.log)+extra, args, setup)
	return d
}

// newDaemon prepares a directory with a certificate; start runs it.
func newDaemon(t *testing.T) *daemon {
	dir := t.TempDir()
	d := &daemon{t: t, dir: dir, log: filepath.Join(dir, "mail.log"), admin: filepath.Join(dir, "admin.sock"), exit: make(chan error, 1)}
	writeCert(t, filepath.Join(dir, "imapd.pem"), "first.example")
	return d
}

// start runs imapgate with a config made of extra (which has the [log]
// section) and waits for its startup line in the log.
func (d *daemon) start(extra string, args []string, setup func(*exec.Cmd)) {
	t := d.t
	t.Helper()
	listen := d.listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	cfg := fmt.Sprintf(`
[listen]
address = %q
[tls]
cert = %q
[upstream]
address = "embedded"
[admin]
address = "unix:%s"
`, listen, filepath.Join(d.dir, "imapd.pem"), d.admin) + extra
	os.WriteFile(filepath.Join(d.dir, "imapgate.toml"), []byte(cfg), 0o644)
	d.cmd = exec.Command(binary, append([]string{"-config", filepath.Join(d.dir, "imapgate.toml")}, args...)...)
	d.cmd.Stderr = os.Stderr
	if setup != nil {
		setup(d.cmd)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exit <- d.cmd.Wait() }()
	t.Cleanup(func() { d.cmd.Process.Kill() })
	re := regexp.MustCompile(`listening on ([0-9.]+:\d+)`)
	d.waitLog(func(s string) bool {
		if m := re.FindStringSubmatch(s); m != nil {
			d.addr = m[1]
			return true
		}
		return false
	})
}

func (d *daemon) logText() string {
	if d.text != nil {
		return d.text()
	}
	b, _ := os.ReadFile(d.log)
	return string(b)
}

func (d *daemon) waitLog(cond func(string) bool) {
	d.t.Helper()
	for i := 0; i < 500; i++ {
		if cond(d.logText()) {
			return
		}
		select {
		case err := <-d.exit:
			d.t.Fatalf("imapgate exited: %v\nlog:\n%s", err, d.logText())
		case <-time.After(20 * time.Millisecond):
		}
	}
	d.t.Fatalf("timed out; log:\n%s", d.logText())
}

func (d *daemon) waitLine(sub string) {
	d.t.Helper()
	d.waitLog(func(s string) bool { return strings.Contains(s, sub) })
}

func (d *daemon) http() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.admin)
	}}}
}

func (d *daemon) get(path string) string {
	d.t.Helper()
	resp, err := d.http().Get("http://imapgate" + path)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metric returns the value of a metric line (name with labels) or -1.
func (d *daemon) metric(name string) float64 {
	for _, l := range strings.Split(d.get("/metrics"), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func (d *daemon) ctl(args ...string) string {
	d.t.Helper()
	out, err := exec.Command(binary, append([]string{"ctl", "-admin", "unix:" + d.admin}, args...)...).CombinedOutput()
	if err != nil {
		d.t.Fatalf("ctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (d *daemon) login(src, user, pass string) (*imapclient.Client, error) {
	dl := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		dl.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	conn, err := tls.DialWithDialer(dl, "tcp", d.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	c := imapclient.New(conn, nil)
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func TestMetricsAndCtl(t *testing.T) {
	d := startDaemon(t, "[limits]\nmax_per_ip = 2\nmax_preauth_per_ip = 2\n", nil, nil)
	// The startup report names every limit in force (rate_per_prefix was
	// missing).
	d.waitLine("max_per_ip=2 max_preauth_per_ip=2 max_per_prefix=300 (/24, /64) max_per_user_ip=20 rate_per_ip=60/1m0s rate_per_prefix=300/1m0s;")
	if d.metric("imapgate_table_max") != 4096 || d.metric(`imapgate_connections{state="established"}`) != 0 {
		t.Fatalf("metrics at start:\n%s", d.get("/metrics"))
	}
	a, err := d.login("127.0.10.1", "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.login("127.0.10.1", "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.login("127.0.10.1", "demo", "demo"); err == nil {
		t.Fatal("third connection from one address admitted with max_per_ip = 2")
	}
	if _, err := d.login("127.0.10.2", "demo", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	// The refused and the failed connections end asynchronously after
	// their clients hang up: wait for the table to settle.
	for deadline := time.Now().Add(5 * time.Second); d.metric(`imapgate_table_entries`) != 2 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	for name, want := range map[string]float64{
		`imapgate_connections{state="established"}`:                     2,
		`imapgate_logins_total{result="ok"}`:                            2,
		`imapgate_logins_total{result="failed"}`:                        1,
		`imapgate_refused_total{reason="max_per_ip",stage="after_tls"}`: 1,
		`imapgate_table_entries`:                                        2,
	} {
		if got := d.metric(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if d.metric(`imapgate_bytes_total{direction="to_client"}`) <= 0 || d.metric("imapgate_open_files_limit") <= 0 {
		t.Error("bytes or open-files metrics missing")
	}
	if m := d.get("/metrics"); strings.Contains(m, "127.0.10") || strings.Contains(m, `user=`) {
		t.Error("an address or user became a metric label")
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(d.get("/metrics"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else if os.Getenv("CI") == "true" {
		t.Error("promtool missing in CI")
	}

	if s := d.ctl("status"); !strings.Contains(s, "connections  2 of 4096") || !strings.Contains(s, "established 2") {
		t.Errorf("ctl status:\n%s", s)
	}
	if s := d.ctl("conns", "addr=127.0.10.1"); strings.Count(s, "user=demo") != 2 || !strings.Contains(s, "established") {
		t.Errorf("ctl conns:\n%s", s)
	}
	if s := d.ctl("top"); !strings.Contains(s, "127.0.10.1  2") || !strings.Contains(s, "127.0.10.2  1") {
		t.Errorf("ctl top:\n%s", s)
	}
	if s := d.ctl("kill", "127.0.10.1"); !strings.Contains(s, "killed: 2") {
		t.Errorf("ctl kill:\n%s", s)
	}
	for _, c := range []*imapclient.Client{a, b} {
		if err := c.Noop().Wait(); err == nil {
			t.Error("killed session still works")
		}
		c.Close()
	}
	d.waitLine("DISCONNECTED, user=demo, ip=[::ffff:127.0.10.1]")
	if s := d.ctl("-json", "status"); !strings.Contains(s, `"count": 0`) {
		t.Errorf("ctl -json status:\n%s", s)
	}
	// Without -admin, ctl finds the endpoint in the daemon's configuration.
	if out, err := exec.Command(binary, "ctl", "-config", filepath.Join(d.dir, "imapgate.toml"), "status").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "connections  ") {
		t.Errorf("ctl -config FILE status: %v\n%s", err, out)
	}
	if s := d.ctl("reload"); !strings.Contains(s, "reloaded: true") {
		t.Errorf("ctl reload: %s", s)
	}
	if d.metric(`imapgate_config_reloads_total{result="ok"}`) != 1 {
		t.Error("reload not counted")
	}
	// A failed reload with -json: the error as JSON on stdout (scripts
	// parse it), the text on stderr, exit status 1.
	path := filepath.Join(d.dir, "imapgate.toml")
	good, _ := os.ReadFile(path)
	os.WriteFile(path, append([]byte("maxperip = 4\n"), good...), 0o644)
	cmd := exec.Command(binary, "ctl", "-admin", "unix:"+d.admin, "-json", "reload")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var failed struct {
		Error string `json:"error"`
	}
	if err := cmd.Run(); cmd.ProcessState.ExitCode() != 1 || json.Unmarshal(stdout.Bytes(), &failed) != nil ||
		!strings.Contains(failed.Error, "imapgate.toml:1: maxperip") || !strings.Contains(stderr.String(), "imapgate.toml:1: maxperip") {
		t.Errorf("ctl -json reload of a bad config: %v; stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}
	os.WriteFile(path, good, 0o644)
	if got := d.get("/readyz"); got != "ready\n" {
		t.Errorf("readyz %q", got)
	}
}

func TestReloadUnderLoad(t *testing.T) {
	d := startDaemon(t, "", nil, nil)
	live, err := d.login("127.0.11.1", "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	cfgPath := filepath.Join(d.dir, "imapgate.toml")
	good, _ := os.ReadFile(cfgPath)

	// A broken file changes nothing.
	os.WriteFile(cfgPath, append(append([]byte{}, good...), "[limits]\nmax_per_ipp = 1\n"...), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLine("reload failed, keeping the running configuration")
	if !strings.Contains(d.logText(), "imapgate.toml") || !strings.Contains(d.logText(), "limits.max_per_ipp: unknown key") {
		t.Errorf("reload error lacks file and key:\n%s", d.logText())
	}
	if err := live.Noop().Wait(); err != nil {
		t.Fatalf("session broken by a failed reload: %v", err)
	}

	// A good file with a new certificate: the session survives, the next
	// client gets the new certificate, and a lowered limit applies to new
	// connections only.
	writeCert(t, filepath.Join(d.dir, "imapd.pem"), "second.example")
	os.WriteFile(cfgPath, append(append([]byte{}, good...), "[limits]\nmax_per_ip = 1\nmax_preauth_per_ip = 1\n"...), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLine("configuration reloaded")
	if err := live.Noop().Wait(); err != nil {
		t.Fatalf("session broken by a reload: %v", err)
	}
	conn, err := tls.Dial("tcp", d.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if name := conn.ConnectionState().PeerCertificates[0].DNSNames[0]; name != "second.example" {
		t.Errorf("after reload the server presents %s", name)
	}
	conn.Close()
	if _, err := d.login("127.0.11.1", "demo", "demo"); err == nil {
		t.Error("lowered max_per_ip not applied to a new connection")
	}
	if err := live.Noop().Wait(); err != nil {
		t.Fatalf("lowering a limit closed a live session: %v", err)
	}
}

// A reload that changes several restart-only settings, some the process
// holds (listen.address) and some the gate does (tls.min_version), names
// them all in one refusal and keeps the running configuration.
func TestReloadNamesEveryRestartOnlyChange(t *testing.T) {
	d := startDaemon(t, "", nil, nil)
	path := filepath.Join(d.dir, "imapgate.toml")
	good, _ := os.ReadFile(path)
	changed := strings.Replace(string(good), `address = "127.0.0.1:0"`, `address = "127.0.0.1:1"`, 1)
	changed = strings.Replace(changed, "[tls]\n", "[tls]\nmin_version = \"1.3\"\n", 1)
	if changed == string(good) {
		t.Fatal("the test's config has changed shape")
	}
	os.WriteFile(path, []byte(changed), 0o644)
	out, err := exec.Command(binary, "ctl", "-admin", "unix:"+d.admin, "reload").CombinedOutput()
	const want = "listen.address, tls.min_version changed, which needs a restart"
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("ctl reload: %v, %q; want %q", err, out, want)
	}
	d.waitLine("keeping the running configuration: " + want)
	if c, err := d.login("", "demo", "demo"); err != nil {
		t.Fatalf("the running configuration is gone: %v", err)
	} else {
		c.Close()
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	d := startDaemon(t, "", []string{"-grace", "1s"}, nil)
	est, err := d.login("127.0.12.1", "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	pre, err := tls.Dial("tcp", d.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(pre)
	r.ReadString('\n') // greeting
	d.cmd.Process.Signal(syscall.SIGTERM)
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "* BYE") {
		t.Errorf("login-phase session got %q, want * BYE", l)
	}
	if err := est.Noop().Wait(); err != nil {
		t.Errorf("logged-in session cut before the grace period: %v", err)
	}
	select {
	case err := <-d.exit:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not exit after the grace period")
	}
	log := d.logText()
	if !strings.Contains(log, "NOTICE: Disconnected during shutdown by signal, user=demo, ip=[::ffff:127.0.12.1]") {
		t.Errorf("no shutdown line for the drained session:\n%s", log)
	}
}

func TestSocketActivationAndNotify(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lf, _ := ln.(*net.TCPListener).File()
	want := ln.Addr().String()
	ln.Close()
	notifyPath := filepath.Join(t.TempDir(), "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	states := make(chan string, 10)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				return
			}
			states <- string(buf[:n])
		}
	}()
	expect := func(prefix string) {
		t.Helper()
		select {
		case s := <-states:
			if !strings.HasPrefix(s, prefix) {
				t.Fatalf("sd_notify %q, want %s", s, prefix)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s", prefix)
		}
	}
	d := startDaemon(t, "", nil, func(cmd *exec.Cmd) {
		// systemd sets LISTEN_PID to the service's pid: sh's $$ survives exec.
		args := cmd.Args
		cmd.Path = "/bin/sh"
		cmd.Args = append([]string{"sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"`, "sh"}, args...)
		cmd.ExtraFiles = []*os.File{lf}
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	})
	if !strings.Contains(d.logText(), "(socket-activated)") || d.addr != want {
		t.Fatalf("not serving the inherited socket %s:\n%s", want, d.logText())
	}
	expect("READY=1")
	c, err := d.login("", "demo", "demo")
	if err != nil {
		t.Fatalf("login on the inherited socket: %v", err)
	}
	c.Close()
	d.cmd.Process.Signal(syscall.SIGHUP)
	expect("RELOADING=1")
	expect("READY=1")
	d.cmd.Process.Signal(syscall.SIGTERM)
	expect("STOPPING=1")
	<-d.exit
}

func TestCheckFlag(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[limits]\nmax_per_ip = \"many\"\n"), 0o644)
	out, err := exec.Command(binary, "-check", "-config", bad).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("bad.toml:2")) {
		t.Fatalf("-check on a bad file: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "-check", "-demo").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("is valid")) {
		t.Fatalf("-check -demo: %v\n%s", err, out)
	}
}

// -check lists every setting, empty lists included, and never a secret.
func TestCheckListsEverySettingAndHidesSecrets(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, filepath.Join(dir, "imapd.pem"), "check.example")
	cfg := filepath.Join(dir, "imapgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[tls]\ncert = %q\n[admin]\naddress = \"\"\ntoken = \"hunter2-token\"\n",
		filepath.Join(dir, "imapd.pem"))), 0o644)
	out, err := exec.Command(binary, "-check", "-config", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("-check: %v\n%s", err, out)
	}
	if bytes.Contains(out, []byte("hunter2")) {
		t.Errorf("-check prints the admin token:\n%s", out)
	}
	for _, re := range []string{
		`admin\.token +=\s+\(set\) +\(file\)`,
		`limits\.deny +=\s+\[\] +\(default\)`,
		`limits\.override +=\s+\[\] +\(default\)`,
		`tls\.sni +=\s+\[\] +\(default\)`,
		`listen\.proxy_protocol_from +=\s+\[\] +\(default\)`,
		`limits\.action\.max_per_ip +=\s+"bye" +\(default\)`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("-check output lacks %s:\n%s", re, out)
		}
	}
}

// The systemd unit's command lines use flags this binary accepts.
func TestSystemdUnitCommandLines(t *testing.T) {
	unit, err := os.ReadFile("../../dist/systemd/imapgate.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeCert(t, filepath.Join(dir, "imapd.pem"), "unit.example")
	cfg := filepath.Join(dir, "imapgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[tls]\ncert = %q\n[admin]\naddress = \"\"\n", filepath.Join(dir, "imapd.pem"))), 0o644)
	for _, key := range []string{"ExecStartPre=", "ExecStart="} {
		var line string
		for _, l := range strings.Split(string(unit), "\n") {
			if strings.HasPrefix(l, key) {
				line = strings.TrimPrefix(l, key)
			}
		}
		args := strings.Fields(strings.ReplaceAll(line, "/etc/imapgate/imapgate.toml", cfg))[1:]
		if key == "ExecStart=" {
			args = append(args, "-check") // validate and exit instead of serving
		}
		if out, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
			t.Errorf("%s%s: %v\n%s", key, line, err, out)
		}
	}
}

// README's block for running without systemd is the unit's ExecStart
// behind setpriv, as the unit's User= and AmbientCapabilities= say.
func TestReadmeRunBlockIsTheUnitsExecStart(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("../../dist/systemd/imapgate.service")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "<!-- install-check: run -->\n```sh\n")
	block, _, ok2 := strings.Cut(after, "```\n")
	if !ok || !ok2 {
		t.Fatal("README.md has no block marked <!-- install-check: run -->")
	}
	run := strings.Join(strings.Fields(strings.ReplaceAll(block, "\\\n", " ")), " ")
	execStart := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(string(unit))[1]
	want := "setpriv --reuid=imapgate --regid=imapgate --init-groups --no-new-privs " +
		"--inh-caps=+net_bind_service --ambient-caps=+net_bind_service " + execStart
	if run != want {
		t.Errorf("README's run block:\n %s\nthe unit runs:\n %s", run, want)
	}
	for _, l := range []string{"User=imapgate", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes"} {
		if !strings.Contains(string(unit), "\n"+l+"\n") {
			t.Errorf("the unit lacks %s, which the README's run block mirrors", l)
		}
	}
}

func TestGCMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		live, nonHeap uint64
		want          int64
	}{
		{0, 0, gcHeadroomFloor},
		{10 << 20, 0, 10<<20 + gcHeadroomFloor},        // small heap: the floor, above GOGC's doubling
		{400 << 20, 0, 400<<20 + 100<<20},              // large heap: a quarter of it
		{10 << 20, 80 << 20, 90<<20 + gcHeadroomFloor}, // 10,000 goroutine stacks are not garbage
		{math.MaxUint64 - 1, 0, math.MaxInt64},         // no overflow
		{math.MaxUint64 - 1, 10, math.MaxInt64},
	} {
		if got := gcMemoryLimit(c.live, c.nonHeap); got != c.want {
			t.Errorf("gcMemoryLimit(%d, %d) = %d, want %d", c.live, c.nonHeap, got, c.want)
		}
	}
}

// A permission error reading courier's files says what to do (Debian's are
// root:courier and the service runs as user imapgate); other errors are
// left as they are.
func TestCourierReadHint(t *testing.T) {
	denied := &fs.PathError{Op: "open", Path: "/etc/courier/imapaccess", Err: fs.ErrPermission}
	msg := courierReadHint(denied).Error()
	for _, want := range []string{"open /etc/courier/imapaccess: permission denied", "root:courier", "run -check -courier-config as root", "adduser "} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	if !errors.Is(courierReadHint(denied), fs.ErrPermission) {
		t.Error("the hint hides the permission error")
	}
	other := errors.New("imapd:3: unterminated quote")
	if courierReadHint(other) != other {
		t.Error("a parse error got the permission hint")
	}
}

// A start that fails once the log is open (here: the admin address is
// taken) says so in the log as well as on stderr, so the log does not end
// with an older process's last line.
func TestFailedStartIsLogged(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "imapgate.log")
	cfg := filepath.Join(dir, "imapgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = %q\n[log]\noutput = \"file:%s\"\n",
		taken.Addr().String(), logPath)), 0o644)
	out, err := exec.Command(binary, "-demo", "-config", cfg).CombinedOutput()
	if err == nil {
		t.Fatalf("started with its admin address taken:\n%s", out)
	}
	want := "imapgate: not started: admin.address: listen tcp " + taken.Addr().String()
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), want) {
		t.Fatalf("the log lacks %q:\n%s\n(stderr: %s)", want, b, out)
	}
}
