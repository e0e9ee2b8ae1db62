package envfile

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	env := Parse([]byte("A='x y'\nB=plain\nC='redis://u:p@h:1?a=1&b=2'\n\nnot a line\nD=''\n"))
	want := map[string]string{"A": "x y", "B": "plain", "C": "redis://u:p@h:1?a=1&b=2", "D": ""}
	if len(env) != len(want) {
		t.Fatalf("Parse = %q, want %q", env, want)
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
}

// The set-up scripts' env files are what a shell sourcing them sees:
// every value, spaces and "&" included, reads the same in bash and here.
// Under CI (which starts courier, Dovecot and Redis) all three must be
// there; elsewhere those not set up are skipped.
func TestEnvFilesAreSourceable(t *testing.T) {
	for _, name := range []string{"IMAPGATE_COURIER", "IMAPGATE_DOVECOT", "IMAPGATE_REDIS"} {
		path := os.Getenv(name)
		if path == "" {
			if os.Getenv("CI") == "true" {
				t.Errorf("%s is not set under CI", name)
			}
			continue
		}
		env, err := Read(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(env) < 3 {
			t.Fatalf("%s: %d keys", path, len(env))
		}
		for k, v := range env {
			out, err := exec.Command("bash", "-euc", `. "$1"; printf %s "${!2}"`, "bash", path, k).CombinedOutput()
			if err != nil || string(out) != v {
				t.Errorf("%s: bash sources %s as %q (%v), Parse reads %q", path, k, strings.TrimSpace(string(out)), err, v)
			}
		}
	}
}
