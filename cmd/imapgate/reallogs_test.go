package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The log paths end to end through real components: systemd-journald,
// rsyslog and fail2ban's stock courier-auth filter (.ci/run installs
// them; each test skips with a message without them, which CI counts as a
// failure).

// need skips the test when a program is missing, saying how to get it.
func need(t *testing.T, prog, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		t.Skipf("%s not installed (apt-get install %s, or run .ci/run)", prog, pkg)
	}
	return p
}

// A syslog timestamp, as rsyslog's traditional file format writes it.
const stampRE = `[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d`

// fail2banIPs runs fail2ban-regex with Debian's stock courier-auth filter
// over file and returns the addresses it matched, in order.
func fail2banIPs(t *testing.T, file string) []string {
	t.Helper()
	regex := need(t, "fail2ban-regex", "fail2ban")
	out, err := exec.Command(regex, "-o", "<ip>", file, "/etc/fail2ban/filter.d/courier-auth.conf").CombinedOutput()
	if err != nil {
		t.Fatalf("fail2ban-regex: %v\n%s", err, out)
	}
	var ips []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			ips = append(ips, l)
		}
	}
	return ips
}

func checkFail2ban(t *testing.T, file string, want ...string) {
	t.Helper()
	if got := fail2banIPs(t, file); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("fail2ban matched %q, want %q in\n%s", got, want, readFile(file))
	}
}

// rsyslogd is a private rsyslog in the foreground: imuxsock on sock,
// mail.* to mail.log in the traditional file format (what fail2ban reads
// in mail.log), and everything to raw.log as "facility.severity <raw
// message as received>".
type rsyslogd struct {
	t                     *testing.T
	prog, conf, pid       string
	sock, mailLog, rawLog string
	cmd                   *exec.Cmd
	out                   syncBuffer
	done                  chan struct{}
}

func startRsyslog(t *testing.T, sock string) *rsyslogd {
	t.Helper()
	dir := t.TempDir()
	r := &rsyslogd{t: t, prog: need(t, "rsyslogd", "rsyslog"), conf: filepath.Join(dir, "rsyslog.conf"), pid: filepath.Join(dir, "rsyslogd.pid"),
		sock: sock, mailLog: filepath.Join(dir, "mail.log"), rawLog: filepath.Join(dir, "raw.log")}
	conf := fmt.Sprintf(`global(workDirectory=%q)
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket=%q CreatePath="on")
template(name="raw" type="string" string="%%syslogfacility-text%%.%%syslogseverity-text%% %%rawmsg%%\n")
mail.* action(type="omfile" file=%q template="RSYSLOG_TraditionalFileFormat")
*.* action(type="omfile" file=%q template="raw")
`, dir, sock, r.mailLog, r.rawLog)
	os.WriteFile(r.conf, []byte(conf), 0o644)
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *rsyslogd) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.prog, "-n", "-f", r.conf, "-i", r.pid)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.done = make(chan struct{})
	go func() { r.cmd.Wait(); close(r.done) }()
	waitSocket(r.t, r.sock, r.done, func() string { return r.out.String() })
}

// stop ends rsyslogd (it removes its socket on the way out).
func (r *rsyslogd) stop() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

func waitSocket(t *testing.T, path string, exited chan struct{}, out func() string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		select {
		case <-exited:
			t.Fatalf("exited before creating %s:\n%s", path, out())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no socket %s:\n%s", path, out())
}

// journald is a private systemd-journald: a journal namespace, as
// systemd-journald@.service runs one, so the host's journal is not
// touched. Its sockets are in /run/systemd/journal.NS; with the Debian
// default ForwardToSyslog=yes it forwards every entry to the syslog socket
// there, which a private rsyslogd reads, as Debian's rsyslog reads
// /run/systemd/journal/syslog.
type journald struct {
	ns, dir string
	cmd     *exec.Cmd
	done    chan struct{}
	out     syncBuffer
}

var namespaceSeq atomic.Int32

// journalNamespace names a namespace for this test and removes its
// directories afterwards.
func journalNamespace(t *testing.T) string {
	if os.Geteuid() != 0 {
		t.Skip("needs root: journald and rsyslog run with sockets in /run/systemd")
	}
	// systemd (PID 1) raises the datagram queue to 512 at boot so that
	// journald's forwarding to syslog does not drop bursts (it never waits
	// for the syslog daemon); without systemd it is the kernel's 10.
	const qlen = "/proc/sys/net/unix/max_dgram_qlen"
	if b, err := os.ReadFile(qlen); err == nil {
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n < 512 {
			os.WriteFile(qlen, []byte("512\n"), 0o644)
		}
	}
	ns := fmt.Sprintf("imapgate-test-%d-%d", os.Getpid(), namespaceSeq.Add(1))
	t.Cleanup(func() {
		id, _ := os.ReadFile("/etc/machine-id")
		if m := strings.TrimSpace(string(id)); m != "" {
			os.RemoveAll("/var/log/journal/" + m + "." + ns)
			os.RemoveAll("/run/log/journal/" + m + "." + ns)
		}
		os.RemoveAll("/run/systemd/journal." + ns)
	})
	return ns
}

func startJournald(t *testing.T, ns string) *journald {
	t.Helper()
	prog := ""
	for _, p := range []string{"/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"} {
		if _, err := os.Stat(p); err == nil {
			prog = p
			break
		}
	}
	if prog == "" {
		t.Skip("systemd-journald not installed (apt-get install systemd, or run .ci/run)")
	}
	j := &journald{ns: ns, dir: "/run/systemd/journal." + ns, done: make(chan struct{})}
	j.cmd = exec.Command(prog, ns)
	j.cmd.Stdout, j.cmd.Stderr = &j.out, &j.out
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { j.cmd.Wait(); close(j.done) }()
	t.Cleanup(func() {
		j.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-j.done:
		case <-time.After(10 * time.Second):
			j.cmd.Process.Kill()
			<-j.done
		}
	})
	waitSocket(t, j.dir+"/stdout", j.done, j.out.String)
	return j
}

// stream connects a journal stream as systemd does for a unit with
// StandardError=journal, SyslogIdentifier=id, SyslogFacility=mail and
// SyslogLevelPrefix=yes, and returns it as a file for a child's stderr
// together with the JOURNAL_STREAM value naming it. (systemd connects in
// the service's own process, so journald forwards the service's pid; here
// the test connects, and the pid in the forwarded tag is the test's.)
func (j *journald) stream(t *testing.T, id string) (*os.File, string) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: j.dir + "/stdout", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CloseRead()
	// identifier, unit, priority (facility|level), level prefix, forward
	// to syslog, to kmsg, to the console.
	fmt.Fprintf(c, "%s\nimapgate.service\n%d\n1\n0\n0\n0\n", id, 2<<3|6)
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// entries returns the journal entries of the namespace whose message
// starts with prefix.
func (j *journald) entries(t *testing.T, prefix string) []map[string]any {
	t.Helper()
	out, err := exec.Command(need(t, "journalctl", "systemd"), "--namespace="+j.ns, "-o", "json", "--no-pager").Output()
	if err != nil {
		t.Fatalf("journalctl: %v", err)
	}
	var found []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			if m, _ := e["MESSAGE"].(string); strings.HasPrefix(m, prefix) {
				found = append(found, e)
			}
		}
	}
	return found
}

// checkEntry checks the journal fields of the entry with message prefix.
func (j *journald) checkEntry(t *testing.T, prefix string, want map[string]string) {
	t.Helper()
	es := j.entries(t, prefix)
	if len(es) != 1 {
		t.Fatalf("%d journal entries start with %q, want 1", len(es), prefix)
	}
	for k, v := range want {
		got, _ := es[0][k].(string)
		if v == "" && es[0][k] != nil || v != "" && got != v {
			t.Errorf("journal entry %q: %s = %v, want %q", prefix, k, es[0][k], v)
		}
	}
}

// The shipped unit's way: imapgate's stderr is a journal stream
// (StandardError=journal, SyslogIdentifier=imapd-ssl, SyslogFacility=mail);
// journald forwards to rsyslog, which writes mail.log. Each line there has
// one header, journald's, and fail2ban's stock filter matches every failed
// login with the client's address.
func TestRealFail2banJournaldStderr(t *testing.T) {
	need(t, "fail2ban-regex", "fail2ban")
	ns := journalNamespace(t)
	r := startRsyslog(t, "/run/systemd/journal."+ns+"/syslog")
	j := startJournald(t, ns)
	stderr, stream := j.stream(t, "imapd-ssl")
	d := newDaemon(t)
	d.log = r.mailLog
	d.start("[log]\noutput = \"stderr\"\n", nil, func(cmd *exec.Cmd) {
		cmd.Stderr = stderr
		cmd.Env = append(os.Environ(), "JOURNAL_STREAM="+stream)
	})
	stderr.Close()

	d.failLogin("127.0.22.1", "demo")
	d.failLogin("127.0.22.2", "nobody@example.com")
	d.failLogin("127.0.22.3", "x], ip=[10.9.9.9")
	d.loginLogout("127.0.22.4")
	d.waitLine("LOGOUT, user=demo, ip=[::ffff:127.0.22.4]")

	mail := readFile(r.mailLog)
	re := regexp.MustCompile(`(?m)^` + stampRE + ` \S+ imapd-ssl\[\d+\]: LOGIN FAILED, user=demo, ip=\[::ffff:127\.0\.22\.1\], port=\[\d+\]$`)
	if !re.MatchString(mail) {
		t.Errorf("mail.log has no line matching %s:\n%s", re, mail)
	}
	for _, l := range strings.Split(strings.TrimSpace(mail), "\n") {
		if strings.Count(l, "imapd-ssl") != 1 || regexp.MustCompile(stampRE+`.*`+stampRE).MatchString(l) {
			t.Errorf("a line with two headers: %q", l)
		}
	}
	j.checkEntry(t, "LOGIN FAILED, user=demo, ip=[::ffff:127.0.22.1]",
		map[string]string{"SYSLOG_IDENTIFIER": "imapd-ssl", "SYSLOG_FACILITY": "2", "PRIORITY": "6"})
	j.checkEntry(t, "Connection, ip=[::ffff:127.0.22.1]", map[string]string{"PRIORITY": "7"})
	checkFail2ban(t, r.mailLog, "127.0.22.1", "127.0.22.2", "127.0.22.3")
}

// output = "syslog" under systemd: /dev/log is journald's dev-log socket
// (PrivateDevices= keeps that link), and journald forwards the message as
// it came, so mail.log gets courier's own line: "host imapd-ssl: …", no
// pid.
func TestRealSyslogJournaldDevLog(t *testing.T) {
	need(t, "fail2ban-regex", "fail2ban")
	ns := journalNamespace(t)
	r := startRsyslog(t, "/run/systemd/journal."+ns+"/syslog")
	j := startJournald(t, ns)
	d := newDaemon(t)
	d.log = r.mailLog
	d.start(fmt.Sprintf("[log]\noutput = \"syslog:%s/dev-log\"\n", j.dir), nil, nil)

	d.failLogin("127.0.23.1", "demo")
	d.failLogin("127.0.23.2", "nobody@example.com")
	d.loginLogout("127.0.23.3")
	d.waitLine("LOGOUT, user=demo, ip=[::ffff:127.0.23.3]")

	mail := readFile(r.mailLog)
	re := regexp.MustCompile(`(?m)^` + stampRE + ` \S+ imapd-ssl: LOGIN FAILED, user=demo, ip=\[::ffff:127\.0\.23\.1\], port=\[\d+\]$`)
	if !re.MatchString(mail) {
		t.Errorf("mail.log has no line matching %s:\n%s", re, mail)
	}
	j.checkEntry(t, "LOGIN FAILED, user=demo, ip=[::ffff:127.0.23.1]",
		map[string]string{"SYSLOG_IDENTIFIER": "imapd-ssl", "SYSLOG_FACILITY": "2", "PRIORITY": "6", "SYSLOG_PID": ""})
	checkFail2ban(t, r.mailLog, "127.0.23.1", "127.0.23.2")
}

// output = "syslog:/socket" to a real rsyslog: the messages are what
// courierlogger sends (PRI of facility mail, tag without pid), fail2ban
// reads the resulting mail.log. Then rsyslog stops: lines go to stderr and
// are counted; it starts again: delivery resumes by itself, and every
// failed login is in exactly one of the two.
func TestRealSyslogRsyslogRestart(t *testing.T) {
	need(t, "fail2ban-regex", "fail2ban")
	r := startRsyslog(t, filepath.Join(t.TempDir(), "log"))
	d := newDaemon(t)
	d.log = r.mailLog
	stderr := &syncBuffer{}
	d.start(fmt.Sprintf("[log]\noutput = \"syslog:%s\"\n", r.sock), nil, func(cmd *exec.Cmd) { cmd.Stderr = stderr })

	d.failLogin("127.0.21.1", "demo")
	d.failLogin("127.0.21.2", "nobody@example.com")
	d.waitLine("LOGIN FAILED, user=nobody@example.com, ip=[::ffff:127.0.21.2]")
	raw := readFile(r.rawLog)
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^mail\.info <22>` + stampRE + ` imapd-ssl: LOGIN FAILED, user=demo, ip=\[::ffff:127\.0\.21\.1\], port=\[\d+\]$`),
		regexp.MustCompile(`(?m)^mail\.debug <23>` + stampRE + ` imapd-ssl: Connection, ip=\[::ffff:127\.0\.21\.1\], port=\[\d+\]$`),
	} {
		if !re.MatchString(raw) {
			t.Errorf("rsyslog received no message matching %s:\n%s", re, raw)
		}
	}
	checkFail2ban(t, r.mailLog, "127.0.21.1", "127.0.21.2")

	r.stop()
	d.failLogin("127.0.21.3", "demo")
	waitFor(t, "the line on stderr", func() bool {
		return strings.Contains(stderr.String(), "imapd-ssl: LOGIN FAILED, user=demo, ip=[::ffff:127.0.21.3]")
	})
	if !strings.Contains(stderr.String(), "lines go to stderr until it is back") {
		t.Errorf("stderr does not say why:\n%s", stderr.String())
	}
	if n := d.metric(`imapgate_log_lines_dropped_total{output="syslog"}`); n < 1 {
		t.Errorf("syslog drops counted: %v", n)
	}

	r.start()
	// The sink connects again at most SyslogRetry after its last failed
	// attempt, when it has lines to send: new sessions give it some.
	for i := 0; !strings.Contains(readFile(r.mailLog), "reachable again"); i++ {
		if i == 100 {
			t.Fatalf("delivery did not resume:\n%s\nstderr:\n%s", readFile(r.mailLog), stderr.String())
		}
		d.loginLogout(fmt.Sprintf("127.0.21.%d", 100+i))
		time.Sleep(50 * time.Millisecond)
	}
	d.failLogin("127.0.21.4", "demo")
	d.waitLine("LOGIN FAILED, user=demo, ip=[::ffff:127.0.21.4]")

	mail, errs := readFile(r.mailLog), stderr.String()
	for _, a := range []string{"127.0.21.1", "127.0.21.2", "127.0.21.3", "127.0.21.4"} {
		in := func(s string) int {
			return strings.Count(s, "LOGIN FAILED, user=demo, ip=[::ffff:"+a+"]") + strings.Count(s, "LOGIN FAILED, user=nobody@example.com, ip=[::ffff:"+a+"]")
		}
		if in(mail)+in(errs) != 1 {
			t.Errorf("failed login from %s: %d times in mail.log, %d on stderr", a, in(mail), in(errs))
		}
	}
	checkFail2ban(t, r.mailLog, "127.0.21.1", "127.0.21.2", "127.0.21.4")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// The shipped logrotate snippet, run by the real logrotate over a running
// imapgate's log file: the file is moved, imapgate reopens (here through
// ctl reopen-logs: there is no systemd to send SIGUSR1), the moved file
// keeps the earlier lines, the new one gets the later ones, and the next
// rotation compresses the moved one.
func TestRealLogrotateSnippet(t *testing.T) {
	prog := need(t, "logrotate", "logrotate")
	snippet, err := os.ReadFile("../../dist/logrotate/imapgate")
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "", nil, nil)
	conf := strings.NewReplacer("/var/log/imapgate/", d.dir+"/", "/usr/local/sbin/imapgate", binary,
		"/etc/imapgate/imapgate.toml", filepath.Join(d.dir, "imapgate.toml")).Replace(string(snippet))
	confFile, state := filepath.Join(d.dir, "logrotate.conf"), filepath.Join(d.dir, "logrotate.state")
	os.WriteFile(confFile, []byte(conf), 0o644)
	rotate := func() {
		t.Helper()
		if out, err := exec.Command(prog, "-f", "-s", state, confFile).CombinedOutput(); err != nil {
			t.Fatalf("logrotate: %v\n%s", err, out)
		}
	}

	d.failLogin("127.0.27.1", "demo")
	d.waitLine("ip=[::ffff:127.0.27.1]")
	rotate()
	d.waitLine("imapgate: log file " + d.log + " reopened")
	d.failLogin("127.0.27.2", "demo")
	d.waitLine("ip=[::ffff:127.0.27.2]")
	if old := readFile(d.log + ".1"); !strings.Contains(old, "ip=[::ffff:127.0.27.1]") || strings.Contains(old, "127.0.27.2") {
		t.Errorf("moved file:\n%s", old)
	}
	if strings.Contains(d.logText(), "127.0.27.1") {
		t.Errorf("new file has an earlier line:\n%s", d.logText())
	}
	rotate()
	d.waitLine("reopened")
	if _, err := os.Stat(d.log + ".2.gz"); err != nil {
		t.Errorf("second rotation did not compress the first moved file: %v", err)
	}
}
