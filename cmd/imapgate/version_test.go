package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

var versionLine = regexp.MustCompile(`^imapgate (\S+) \(revision (\S+), (go\S+), linux/\w+\)\n$`)

// -version prints the version given with -ldflags -X main.version, or
// else the one Go stamped, and the revision and Go version; the metric
// imapgate_build_info carries the same.
func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "-version").CombinedOutput()
	m := versionLine.FindStringSubmatch(string(out))
	if err != nil || m == nil || m[3] != runtime.Version() {
		t.Fatalf("-version: %v\n%q", err, out)
	}
	stamped := filepath.Join(t.TempDir(), "imapgate")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=9.8.7-test", "-o", stamped, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err = exec.Command(stamped, "-version").CombinedOutput()
	if m := versionLine.FindStringSubmatch(string(out)); err != nil || m == nil || m[1] != "9.8.7-test" {
		t.Fatalf("-version of a build with -X main.version=9.8.7-test: %v\n%q", err, out)
	}
}

func TestBuildInfoFallsBack(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = ""
	if b := readBuildInfo(); b.Version == "" || b.GoVersion != runtime.Version() || b.Revision == "" {
		t.Errorf("without -X: %+v", b)
	}
	version = "1.2.3"
	if b := readBuildInfo(); b.Version != "1.2.3" {
		t.Errorf("with -X: %+v", b)
	}
}

func TestBuildInfoMetric(t *testing.T) {
	d := startDaemon(t, "", nil, nil)
	out, _ := exec.Command(binary, "-version").Output()
	m := versionLine.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("-version: %q", out)
	}
	want := `imapgate_build_info{goversion="` + m[3] + `",revision="` + m[2] + `",version="` + m[1] + `"} 1`
	if metrics := d.get("/metrics"); !strings.Contains(metrics, want+"\n") {
		t.Errorf("metrics lack %s", want)
	}
}
