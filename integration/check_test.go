package integration

// imapgate -check with [cluster]: it asks the real Redis what a node will
// (cluster.Probe) and says what it found on one line; refused
// credentials and missing ACL rights fail it, an unreachable Redis is a
// warning.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"imapgate/internal/redistest"
)

// runCheck runs imapgate -check on a configuration whose cluster.redis
// is redisURL and returns its exit code and output (stdout and stderr).
func runCheck(t *testing.T, redisURL string) (int, string) {
	t.Helper()
	dir := t.TempDir()
	return runCheckCmd(t, exec.Command(imapgateBinary(t), "-check", "-config", checkConfig(t, dir, redisURL, "")))
}

// checkConfig writes a configuration for -check in dir: cluster.redis is
// redisURL, extra more keys of [cluster].
func checkConfig(t *testing.T, dir, redisURL, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`
[listen]
address = "127.0.0.1:0"
[tls]
cert = %q
[upstream]
address = "embedded"
[cluster]
redis = %q
node = "check"
%s
`, clusterCert(t, dir), redisURL, extra)
	path := filepath.Join(dir, "check.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCheckCmd runs cmd (imapgate -check) and returns its exit code and
// output.
func runCheckCmd(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	code := 0
	if exit != nil {
		code = exit.ExitCode()
	}
	return code, string(out)
}

// checkLine is -check's line about the cluster (or the whole output).
func checkLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "cluster") && !strings.HasPrefix(l, "  ") {
			return l
		}
	}
	return out
}

// expectCheck runs -check and fails the test unless it exits with code
// and its cluster line has every one of want, and no password of secrets.
func expectCheck(t *testing.T, redisURL string, code int, want []string, secrets ...string) {
	t.Helper()
	got, out := runCheck(t, redisURL)
	line := checkLine(out)
	t.Logf("exit %d: %s", got, line)
	if got != code {
		t.Errorf("exit %d, want %d\n%s", got, code, out)
	}
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("%q lacks %q", line, w)
		}
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(out, s) {
			t.Errorf("the output quotes a password:\n%s", out)
		}
	}
}

func password(t *testing.T, redisURL string) string {
	u, err := url.Parse(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := u.User.Password()
	return p
}

// A good user passes and the line says what answered: the version, the
// mode (standalone, by TCP or the unix socket, the Sentinel master,
// Redis Cluster's masters and the keys' slot), the round trip and the
// rights checked.
func TestRealRedisCheckReportsWhatItFound(t *testing.T) {
	env := redistest.Env(t)
	for _, p := range strings.Split(env["REDIS_SENTINEL_PORTS"], ",") {
		exec.Command("bash", env["REDIS_SETUP"], "start-port", p).Run()
	}
	rights := "user imapgate may run scripts (EVAL, EVALSHA), send the 26 commands imapgate and its scripts send on keys {imapgate}:*, and PUBLISH and SUBSCRIBE on {imapgate}:ev"
	for _, tt := range []struct{ name, url, mode string }{
		{"standalone", env["REDIS_URL"], "standalone at 127.0.0.1:16379"},
		{"unix", redistest.Get(t, "REDIS_UNIX_URL"), "standalone at " + env["REDIS_DIR"] + "/16379/redis.sock"},
		{"sentinel", env["REDIS_SENTINEL_URL"], "Sentinel master imapgate at 127.0.0.1:1638"},
		{"cluster", env["REDIS_CLUSTER_URL"], "Redis Cluster of 3 masters and 3 replicas"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			expectCheck(t, tt.url, 0, []string{"imapgate: cluster: Redis 7.", tt.mode, "round trip", rights},
				password(t, tt.url), env["REDIS_SENTINEL_PASSWORD"])
		})
	}
}

// A wrong password, or none, fails -check and says it was the
// credentials (of Redis, or of the sentinel), never quoting a password.
func TestRealRedisCheckRefusedCredentials(t *testing.T) {
	env := redistest.Env(t)
	u, _ := url.Parse(env["REDIS_URL"])
	good := password(t, env["REDIS_URL"])
	wrong := *u
	wrong.User = url.UserPassword("imapgate", "wrong-"+good)
	short := *u
	short.User = url.UserPassword("imapgate", "a") // in many words of the message, which stays whole
	none := *u
	none.User = nil
	s, _ := url.Parse(env["REDIS_SENTINEL_URL"])
	q := s.Query()
	q.Set("sentinel_password", "wrong-"+env["REDIS_SENTINEL_PASSWORD"])
	s.RawQuery = q.Encode()
	// The Sentinel form with Redis's own port where a sentinel's belongs.
	notSentinel := *s
	notSentinel.Host = "127.0.0.1:16379"
	q.Set("sentinel_password", env["REDIS_SENTINEL_PASSWORD"])
	notSentinel.RawQuery = q.Encode()
	for _, tt := range []struct {
		name, url string
		want      []string
	}{
		{"wrong password", wrong.String(), []string{"Redis at 127.0.0.1:16379 refused user imapgate and its password (WRONGPASS",
			"check the URL's user and password"}},
		{"no password", none.String(), []string{"Redis at 127.0.0.1:16379 requires a user and password (NOAUTH)"}},
		{"short wrong password", short.String(), []string{"imapgate: cluster.redis: Redis at 127.0.0.1:16379 refused user imapgate " +
			"and its password (WRONGPASS: a wrong password, an unknown user or one that is off): check the URL's user and password"}},
		{"wrong sentinel password", s.String(), []string{"the sentinel at 127.0.0.1:26379 refused user sentinel",
			"check sentinel_username and sentinel_password"}},
		{"not a sentinel", notSentinel.String(), []string{"127.0.0.1:16379 is a Redis server (its role: master), not a sentinel: " +
			"name the sentinels in the URL, with their port (26379 unless their sentinel.conf says otherwise)"}},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			expectCheck(t, tt.url, 1, append(tt.want, "imapgate: cluster.redis: "),
				good, "wrong-"+good, env["REDIS_SENTINEL_PASSWORD"])
		})
	}
}

// An ACL user that lacks a right imapgate needs fails -check, which
// names the rule to add. Each user is made for the test (by the main
// instance's user "setup") with the README's rights less one, and
// deleted after.
func TestRealRedisCheckMissingRight(t *testing.T) {
	env := redistest.Env(t)
	admin := redisClient(t, redistest.Get(t, "REDIS_ADMIN_URL"))
	full := []string{"~{imapgate}:*", "&{imapgate}:ev", "+@all", "-@dangerous"}
	for _, tt := range []struct {
		name string
		acl  []string
		rule string
	}{
		{"evalsha", append(full, "-evalsha"), "+evalsha"},
		{"eval", append(full, "-eval"), "+eval"},
		{"hincrby", append(full, "-hincrby"), "+hincrby"},
		{"keys", []string{"~{other}:*", "&{imapgate}:ev", "+@all", "-@dangerous"}, "~{imapgate}:*"},
		{"channel", []string{"~{imapgate}:*", "resetchannels", "+@all", "-@dangerous"}, "&{imapgate}:ev"},
		{"subscribe", append(full, "-subscribe"), "+subscribe"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			user := fmt.Sprintf("imapgate-check-%s-%d", tt.name, time.Now().UnixNano())
			pass := fmt.Sprintf("pw-%d", time.Now().UnixNano())
			acl := append([]string{"ACL", "SETUSER", user, "reset", "on", ">" + pass}, tt.acl...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := admin.Do(ctx, admin.B().Arbitrary(acl...).Build()).Error(); err != nil {
				t.Fatalf("ACL SETUSER: %v", err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				admin.Do(ctx, admin.B().Arbitrary("ACL", "DELUSER", user).Build())
			})
			u, _ := url.Parse(env["REDIS_URL"])
			u.User = url.UserPassword(user, pass)
			expectCheck(t, u.String(), 1, []string{"user " + user + " lacks rights imapgate needs (NOPERM): add " + tt.rule + " to its ACL",
				"ACL SETUSER " + user + " " + tt.rule}, pass)
		})
	}
}

// Redis not answering is a warning: -check says the node would start on
// local limits, and passes a configuration otherwise fine.
func TestRealRedisCheckUnreachable(t *testing.T) {
	env := redistest.Env(t)
	u, _ := url.Parse(env["REDIS_URL"])
	u.Host = freeAddr(t) // nothing listens there
	got, out := runCheck(t, u.String())
	t.Logf("exit %d: %s", got, checkLine(out))
	if got != 0 {
		t.Errorf("exit %d, want 0 (a warning)", got)
	}
	for _, w := range []string{"imapgate: warning: cluster.redis: Redis at " + u.Host + " did not answer",
		"connection refused", "a node would start on local limits and switch to the shared ones when Redis answers",
		"is valid"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if strings.Contains(out, password(t, env["REDIS_URL"])) {
		t.Error("the output quotes the password")
	}
}
