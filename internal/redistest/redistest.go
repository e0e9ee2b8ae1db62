// Package redistest finds the real Redis instances that
// integration/redis/setup.sh starts, for the tests and benchmarks that
// need them. setup.sh writes their addresses and credentials as KEY=value
// lines to an environment file: $IMAPGATE_REDIS, or /tmp/imapgate-redis/env.
package redistest

import (
	"fmt"
	"os"
	"testing"

	"imapgate/internal/envfile"
)

// path is the environment file's path.
func path() string {
	if p := os.Getenv("IMAPGATE_REDIS"); p != "" {
		return p
	}
	return "/tmp/imapgate-redis/env"
}

func read() (map[string]string, error) {
	b, err := os.ReadFile(path())
	if err != nil {
		return nil, fmt.Errorf("real Redis not set up (%w): run sudo integration/redis/setup.sh install && sudo integration/redis/setup.sh start", err)
	}
	return envfile.Parse(b), nil
}

// Env returns the file's keys. Without the file the test fails under CI
// (CI=true, where a skipped real-Redis test is a failure) and skips
// elsewhere.
func Env(t testing.TB) map[string]string {
	t.Helper()
	env, err := read()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return env
}

// Get returns one key of Env; a key the file lacks fails the test.
func Get(t testing.TB, key string) string {
	t.Helper()
	v, ok := Env(t)[key]
	if !ok {
		t.Fatalf("no %s in %s (run integration/redis/setup.sh start again)", key, path())
	}
	return v
}

// Lookup returns one key of the file, or why it cannot (for benchmarks,
// which skip rather than fail).
func Lookup(key string) (string, error) {
	env, err := read()
	if err != nil {
		return "", err
	}
	v, ok := env[key]
	if !ok {
		return "", fmt.Errorf("no %s in %s (run integration/redis/setup.sh start again)", key, path())
	}
	return v, nil
}
