package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// peer is one proxy under test, a single process on the server core.
type peer struct {
	name string
	addr string
	cmd  *exec.Cmd
	pid  int
}

// perIPLimit is the concurrent-connection limit every peer enforces per
// address (imapgate max_per_ip, HAProxy conn_cur, nginx limit_conn).
const perIPLimit = 20

type peerSetup struct {
	dir       string // work directory
	cert      string // PEM: cert then key (HAProxy) — imapgate reads it too
	certOnly  string
	keyOnly   string
	upstream  string
	gate      string // imapgate binary
	baseline  string // another imapgate binary, measured as peer "baseline"
	core      int
	gateProcs int    // GOMAXPROCS of the imapgate peers
	profile   string // write imapgate's CPU profile here
}

func freePort() string {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	return ln.Addr().String()
}

// start runs peer name with the profile's configuration: "" is the
// side-by-side one (per-address limit 20 everywhere); "flood" leaves
// imapgate at its defaults (table.max 4096, every limit as shipped), the
// configuration a table flood meets. Peer "imapgate-kernel" is imapgate
// with [kernel] nftables = true (run imapbench with -netns).
func (s *peerSetup) start(name, profile string) (*peer, error) {
	addr := freePort()
	var args []string
	env := os.Environ()
	switch name {
	case "imapgate", "baseline", "imapgate-kernel":
		// Files of each peer's own: the flood scenario runs them side by side.
		sock := filepath.Join(s.dir, "admin.sock")
		if name != "imapgate" {
			sock = filepath.Join(s.dir, name+"-admin.sock")
		}
		os.WriteFile(filepath.Join(s.dir, name+".toml"), []byte(s.gateConfig(addr, filepath.Join(s.dir, name+".log"), sock, profile != "flood", kernelSection(name))), 0o644)
	}
	switch name {
	case "imapgate", "baseline", "imapgate-kernel":
		cfg := filepath.Join(s.dir, name+".toml")
		gate := s.gate
		if name == "baseline" {
			gate = s.baseline
		}
		args = []string{gate, "-config", cfg, "-grace", "0s"}
		if s.profile != "" && name == "imapgate" {
			args = append(args, "-cpuprofile", s.profile)
		}
		env = append(env, "GOMAXPROCS="+strconv.Itoa(max(s.gateProcs, 1)))
	case "haproxy":
		cfg := filepath.Join(s.dir, "haproxy.cfg")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`
global
    nbthread 1
    # two descriptors per connection within the 20,000 hard limit
    maxconn 9900
defaults
    mode tcp
    timeout connect 5s
    # 35m: IDLE sessions; the flood profile: 10s, HAProxy 2.6's only limit
    # on a TLS handshake (imapgate's timeouts.handshake)
    timeout client %s
    timeout server 35m
frontend imaps
    bind %s ssl crt %s
    stick-table type ip size 1m expire 10m store conn_cur
    tcp-request connection track-sc0 src
    tcp-request connection reject if { sc0_conn_cur gt %d }
    default_backend imap
backend imap
    server upstream %s
`, clientTimeout(profile), addr, s.cert, perIPLimit, s.upstream)), 0o644)
		args = []string{"haproxy", "-db", "-f", cfg}
	case "nginx":
		host, port, _ := net.SplitHostPort(addr)
		cfg := filepath.Join(s.dir, "nginx.conf")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid %s/nginx.pid;
error_log %s/nginx.err warn;
events { worker_connections 20000; }
stream {
    limit_conn_zone $binary_remote_addr zone=perip:10m;
    server {
        listen %s:%s ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        limit_conn perip %d;
        ssl_handshake_timeout 10s;
        proxy_pass %s;
        proxy_timeout 35m;
    }
}
`, s.dir, s.dir, host, port, s.certOnly, s.keyOnly, perIPLimit, s.upstream)), 0o644)
		args = []string{"nginx", "-p", s.dir, "-c", cfg}
	case "floor", "floor-reset":
		bin, err := s.buildFloor()
		if err != nil {
			return nil, err
		}
		host, port, _ := net.SplitHostPort(addr)
		args = []string{bin, host, port}
		if name == "floor-reset" {
			args = append(args, "reset")
		}
	default:
		return nil, fmt.Errorf("unknown peer %s", name)
	}
	cmd := exec.Command("taskset", append([]string{"-c", strconv.Itoa(s.core)}, args...)...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &peer{name: name, addr: addr, cmd: cmd, pid: cmd.Process.Pid}
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return p, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop()
	return nil, fmt.Errorf("%s did not start listening on %s", name, addr)
}

// buildFloor compiles integration/bench/floor.c (peers "floor" and
// "floor-reset": accept and close, nothing else) with the system's C compiler, once per run.
func (s *peerSetup) buildFloor() (string, error) {
	bin := filepath.Join(s.dir, "floor")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	out, err := exec.Command("cc", "-O2", "-o", bin, "integration/bench/floor.c").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("peer floor: building integration/bench/floor.c with cc (run from the repository root; apt-get install gcc): %v\n%s", err, out)
	}
	return bin, nil
}

// clientTimeout is HAProxy's timeout client for the profile.
func clientTimeout(profile string) string {
	if profile == "flood" {
		return "10s"
	}
	return "35m"
}

// kernelSection turns the kernel path on for peer imapgate-kernel only
// (older builds, as a baseline, know no [kernel]).
func kernelSection(name string) string {
	if name != "imapgate-kernel" {
		return ""
	}
	return "[kernel]\nnftables = true\n"
}

func (p *peer) stop() {
	// SIGTERM first, so a profiling imapgate writes its profile.
	syscall.Kill(-p.pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.pid, syscall.SIGKILL)
		<-done
	}
}

// cpu returns the process's user+system CPU time so far (taskset execs the
// peer in place, so the pid is the peer's): the sum of its threads' run
// times from /proc/PID/task/*/schedstat, in nanoseconds, or, when that sum
// falls short of /proc/PID/stat's utime+stime (a thread ended, and its time
// is only there), the latter, in 10 ms ticks. The ticks alone made a
// figure of a few hundred milliseconds, such as a flood's 4,000 refusals,
// step by several per cent.
func (p *peer) cpu() time.Duration {
	ticks := p.statCPU()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
	if err != nil {
		return ticks
	}
	var run time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", p.pid, t.Name()))
		if err != nil {
			continue // the thread ended meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return ticks
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return ticks
		}
		run += time.Duration(ns)
	}
	if run < ticks-20*time.Millisecond {
		return ticks
	}
	return run
}

// statCPU is /proc/PID/stat's utime+stime (USER_HZ ticks, every thread's,
// ended ones included).
func (p *peer) statCPU() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// rss returns the process's resident memory.
func (p *peer) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// gateConfig is imapgate's configuration in the scenarios (the peers'
// and the cluster's): a log file and an admin socket; with sessionLimits
// the same limits as the other peers (perIPLimit, closing), a table of
// 9,900 and a 35-minute IDLE (the flood profile keeps the defaults);
// extra is TOML appended ([kernel], [cluster]).
func (s *peerSetup) gateConfig(addr, logPath, adminSock string, sessionLimits bool, extra string) string {
	cfg := fmt.Sprintf(`
[listen]
address = %q
[tls]
cert = %q
[upstream]
address = %q
[log]
output = "file:%s"
[admin]
address = "unix:%s"
`, addr, s.cert, s.upstream, logPath, adminSock)
	if sessionLimits {
		cfg += fmt.Sprintf(`[table]
max = 9900
[timeouts]
established = "35m"
[limits]
max_per_ip = %d
max_preauth_per_ip = %d
max_per_prefix = 0
max_per_user_ip = 0
rate_per_ip = "0"
rate_per_prefix = "0"
[limits.action]
max_per_ip = "close"
max_preauth_per_ip = "close"
`, perIPLimit, perIPLimit)
	}
	return cfg + extra
}
