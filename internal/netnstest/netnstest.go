//go:build linux

// Package netnstest runs a test in a network namespace of its own, so that
// it can change nftables rules and watch conntrack without touching the
// host's: the test binary runs itself again under "unshare -n" (as root),
// with only that test selected; inside, the loopback interface is brought
// up and the test body runs. Outside CI a test that cannot do this skips
// with the reason; with CI=true it fails.
//
//	func TestRealNftablesSomething(t *testing.T) {
//		if !netnstest.Enter(t, netnstest.Options{}) {
//			return // the body ran, and passed, in the namespace
//		}
//		... // in the namespace
//	}
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"imapgate/internal/netns"
)

const envInside = "IMAPGATE_NETNS_TEST"

// Options say how the namespace's process runs.
type Options struct {
	// Unprivileged runs the body as user nobody without any capability
	// (setpriv), to test what happens without CAP_NET_ADMIN. The loopback
	// interface stays down.
	Unprivileged bool
}

// Inside reports whether this process is a namespace child running the
// named test.
func Inside(t *testing.T) bool { return os.Getenv(envInside) == t.Name() }

// Enter returns true in the namespace, where the caller goes on with the
// test body. Outside, it runs the test in a new namespace, fails t if it
// failed there (with its output), and returns false. t must be a
// top-level test.
func Enter(t *testing.T, o Options) bool {
	t.Helper()
	if Inside(t) {
		if !o.Unprivileged {
			if err := netns.LoopbackUp(); err != nil {
				t.Fatalf("bring lo up in the namespace: %v", err)
			}
		}
		return true
	}
	args, why := command(t, o)
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot run in a network namespace: %s", why)
		}
		t.Skipf("cannot run in a network namespace: %s (CI runs it as root)", why)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), envInside+"="+t.Name())
	if o.Unprivileged {
		// User nobody cannot reach go test's private work directory: run
		// a copy of the binary from a directory it can read.
		dir, bin, err := copyBinary()
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		args[len(args)-6] = bin
		cmd = exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), envInside+"="+t.Name())
		cmd.Dir = dir
	}
	out, err := cmd.CombinedOutput()
	text := string(out)
	switch {
	case err != nil:
		t.Fatalf("in the namespace (%s): %v\n%s", strings.Join(args[:len(args)-6], " "), err, text)
	case strings.Contains(text, "--- SKIP: "+t.Name()):
		if os.Getenv("CI") == "true" {
			t.Fatalf("skipped in the namespace:\n%s", text)
		}
		t.Skipf("skipped in the namespace:\n%s", text)
	case !strings.Contains(text, "--- PASS: "+t.Name()):
		t.Fatalf("the namespace's run did not pass:\n%s", text)
	}
	if testing.Verbose() {
		t.Logf("ran in a new network namespace:\n%s", text)
	}
	return false
}

// command is the namespace's command line, or why there is none.
func command(t *testing.T, o Options) ([]string, string) {
	if runtime.GOOS != "linux" {
		return nil, "network namespaces are Linux's"
	}
	if os.Geteuid() != 0 {
		return nil, "needs root (unshare -n)"
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return nil, "unshare (util-linux) is not installed"
	}
	if out, err := exec.Command(unshare, "-n", "true").CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("unshare -n fails here: %v %s", err, out)
	}
	args := []string{unshare, "-n"}
	if o.Unprivileged {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			return nil, "setpriv (util-linux) is not installed"
		}
		args = append(args, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs")
	}
	return append(args, os.Args[0], "-test.run", "^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1", "-test.timeout=5m"), ""
}

// copyBinary copies the test binary into a new directory that every user
// may read and enter.
func copyBinary() (dir, bin string, err error) {
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		return "", "", err
	}
	if dir, err = os.MkdirTemp("", "netnstest"); err != nil {
		return "", "", err
	}
	bin = dir + "/test.bin"
	if err = os.WriteFile(bin, b, 0o755); err == nil {
		err = os.Chmod(dir, 0o755)
	}
	return dir, bin, err
}
