package integration

// imapgate -check against a server that does not speak what the URL's
// scheme says, or a socket it may not open: configuration errors, each
// naming the likely cause and the fix, found within seconds. Each test
// runs redis-servers of its own (ports 28300–28399), stopped after.

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"imapgate/certs"
	"imapgate/internal/redistest"
)

// ownRedis starts a redis-server in dir on a free port of 28300–28399
// with args (the port's own flags among them: "--port" or "--tls-port"
// followed by PORT, which it replaces) and stops it when the test ends.
// It returns the port, once the server accepts (or, with --port 0 and a
// unix socket, once the socket exists).
func ownRedis(t *testing.T, dir string, args ...string) int {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not installed (integration/redis/setup.sh install)")
	}
	for try := 0; try < 20; try++ {
		port := 28300 + rand.IntN(100)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		a := []string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
			"--logfile", filepath.Join(dir, fmt.Sprintf("redis-%d.log", port))}
		for _, x := range args {
			a = append(a, strings.ReplaceAll(x, "PORT", fmt.Sprint(port)))
		}
		cmd := exec.Command("redis-server", a...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitFor(t, "redis-server to listen", func() bool {
			for i, x := range a {
				if x == "--unixsocket" {
					_, err := os.Stat(a[i+1])
					return err == nil
				}
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return port
	}
	t.Fatal("no free port in 28300-28399")
	return 0
}

// tlsFiles writes a self-signed certificate for 127.0.0.1 and its key,
// for a TLS redis-server and the URL's tls_ca_file.
func tlsFiles(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	c, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	certFile, keyFile = filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// A scheme that does not match the server, a server that wants a client
// certificate, one whose certificate does not verify: -check fails
// (exit 1), says what to change, and takes no more than a few seconds,
// also with timeout = "1s" (the client's dial timeout then 10 s). A
// rediss:// URL to the TLS Redis with its CA passes.
func TestRealRedisCheckSchemeMismatch(t *testing.T) {
	redistest.Env(t)
	dir := t.TempDir()
	crt, key := tlsFiles(t, dir)
	tlsArgs := []string{"--port", "0", "--tls-port", "PORT", "--tls-cert-file", crt, "--tls-key-file", key, "--tls-ca-cert-file", crt}
	plain := ownRedis(t, dir, "--port", "PORT")
	tlsPort := ownRedis(t, dir, append(tlsArgs, "--tls-auth-clients", "no")...)
	clientCert := ownRedis(t, dir, append(tlsArgs, "--tls-auth-clients", "yes")...)
	ca := fmt.Sprintf("tls_ca_file = %q", crt)
	for _, tt := range []struct {
		name, url, extra string
		code             int
		want             []string
	}{
		{"rediss to a plain Redis", fmt.Sprintf("rediss://127.0.0.1:%d", plain), `timeout = "1s"`, 1,
			[]string{"accepts TCP but never answered the TLS handshake (within 2s): is it a plain Redis? use redis://"}},
		{"redis to a TLS port", fmt.Sprintf("redis://127.0.0.1:%d", tlsPort), "", 1,
			[]string{"reset the connection on a plain request and answers a TLS handshake: it wants TLS; use rediss://"}},
		{"rediss without its CA", fmt.Sprintf("rediss://127.0.0.1:%d", tlsPort), "", 1,
			[]string{"its certificate does not verify", "give the CA that signed it in cluster.tls_ca_file"}},
		{"rediss wanting a client certificate", fmt.Sprintf("rediss://127.0.0.1:%d", clientCert), ca, 1,
			[]string{"wants a client certificate", "set tls-auth-clients no"}},
		{"rediss with its CA", fmt.Sprintf("rediss://127.0.0.1:%d", tlsPort), ca, 0,
			[]string{fmt.Sprintf("imapgate: cluster: Redis 7.0.15, standalone at 127.0.0.1:%d over TLS", tlsPort)}},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			start := time.Now()
			got, out := runCheckCmd(t, exec.Command(imapgateBinary(t), "-check", "-config", checkConfig(t, t.TempDir(), tt.url, tt.extra)))
			took := time.Since(start)
			line := checkLine(out)
			t.Logf("exit %d after %s: %s", got, took.Round(time.Millisecond), line)
			if got != tt.code {
				t.Errorf("exit %d, want %d\n%s", got, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(line, w) {
					t.Errorf("%q lacks %q", line, w)
				}
			}
			if took > 4*time.Second {
				t.Errorf("-check took %s", took)
			}
		})
	}
}

// A unix socket the user imapgate runs as may not open (mode 700, owned
// by root; -check run as nobody) fails -check with what to change.
func TestRealRedisCheckSocketPermission(t *testing.T) {
	redistest.Env(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the socket is root's and -check runs as nobody (setpriv)")
	}
	// A directory everyone may enter, for the socket, the binary and the
	// configuration (t.TempDir's parent is root's alone).
	dir, err := os.MkdirTemp("", "imapgate-socket")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "redis.sock")
	ownRedis(t, dir, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700")
	bin := filepath.Join(dir, "imapgate")
	b, err := os.ReadFile(imapgateBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := checkConfig(t, dir, "unix://"+sock, "")
	for _, f := range []string{dir, cfg, filepath.Join(dir, "cert.pem")} {
		if err := os.Chmod(f, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, out := runCheckCmd(t, exec.Command("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", bin, "-check", "-config", cfg))
	line := checkLine(out)
	t.Logf("exit %d: %s", got, line)
	if got != 1 {
		t.Errorf("exit %d, want 1\n%s", got, out)
	}
	for _, w := range []string{"Redis at " + sock + ": permission denied on the socket",
		"add the user imapgate runs as to the socket's group (adduser imapgate redis) or fix its mode"} {
		if !strings.Contains(line, w) {
			t.Errorf("%q lacks %q", line, w)
		}
	}
	// root may open it: the same configuration passes.
	if got, out := runCheckCmd(t, exec.Command(bin, "-check", "-config", cfg)); got != 0 {
		t.Errorf("as root: exit %d\n%s", got, out)
	}
}

// A node whose [cluster] names a scheme the server does not speak says so
// in its log, as -check would, instead of only that Redis does not answer.
func TestRealRedisNodeLogsSchemeMismatch(t *testing.T) {
	redistest.Env(t)
	dir := t.TempDir()
	plain := ownRedis(t, dir, "--port", "PORT")
	tc := startCluster(t, 1, fmt.Sprintf("rediss://127.0.0.1:%d", plain), "", "")
	g := tc.nodes[0]
	want := "imapgate: cluster: error: Redis at 127.0.0.1:" + fmt.Sprint(plain) + " accepts TCP but never answered the TLS handshake"
	waitFor(t, "the node to log the mismatch", func() bool {
		b, _ := os.ReadFile(g.logPath)
		return strings.Contains(string(b), want) && strings.Contains(string(b), "use redis://")
	})
}
