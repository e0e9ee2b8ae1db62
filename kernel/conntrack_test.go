package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"imapgate/courierlog"
)

func writeConntrack(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for path, v := range files {
		p := filepath.Join(root, path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The watch reads count, max and the bucket count, warns once per level
// crossed upwards with the numbers and the remedy, and copes with the
// files missing.
func TestConntrackWatch(t *testing.T) {
	root := t.TempDir()
	var logged []string
	w := &ConntrackWatch{Root: root, Log: func(_ courierlog.Priority, m string) { logged = append(logged, m) }}
	if _, ok := w.Check(); ok {
		t.Fatal("a reading without conntrack")
	}
	writeConntrack(t, root, map[string]string{
		"proc/sys/net/netfilter/nf_conntrack_count":   "1000",
		"proc/sys/net/netfilter/nf_conntrack_max":     "4096",
		"sys/module/nf_conntrack/parameters/hashsize": "1024",
	})
	c, ok := w.Check()
	if !ok || c != (Conntrack{Count: 1000, Max: 4096, Buckets: 1024}) || len(logged) != 0 {
		t.Fatalf("reading %+v %v, log %q", c, ok, logged)
	}
	for _, n := range []string{"3300", "3400", "3900", "4000", "3000", "3300"} {
		writeConntrack(t, root, map[string]string{"proc/sys/net/netfilter/nf_conntrack_count": n})
		w.Check()
	}
	want := []string{"over 80% full: 3300 of 4096 entries (81%), 1024 buckets", "over 95% full: 3900 of 4096", "over 80% full: 3300"}
	if len(logged) != len(want) {
		t.Fatalf("log %q", logged)
	}
	for i, l := range logged {
		if !strings.Contains(l, want[i]) || !strings.Contains(l, "hashsize") || !strings.Contains(l, "nf_conntrack_max") {
			t.Errorf("line %d: %q, want %q and the remedy", i, l, want[i])
		}
	}
}
