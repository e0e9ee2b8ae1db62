package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

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
		if !strings.Contains(l, want[i]) || !strings.Contains(l, "hashsize") || !strings.Contains(l, "nf_conntrack_max") ||
			!strings.Contains(l, "enable [kernel] nftables") {
			t.Errorf("line %d: %q, want %q and the remedy", i, l, want[i])
		}
	}
	// With imapgate's nftables path running, the remedy does not suggest
	// turning it on.
	w.NFTablesOn = func() bool { return true }
	writeConntrack(t, root, map[string]string{"proc/sys/net/netfilter/nf_conntrack_count": "4000"})
	w.Check()
	if l := logged[len(logged)-1]; !strings.Contains(l, "over 95% full") || strings.Contains(l, "nftables") || !strings.Contains(l, "hashsize") {
		t.Errorf("with nftables on: %q", l)
	}
}

// SetInterval turns the watch on (a first reading at once), re-times it
// (the next reading one new interval later, no warning repeated) and off
// (the goroutine ends, the reading is forgotten); on again, it starts
// afresh. synctest fails the test if the goroutine outlives it.
func TestConntrackWatchSetInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		root := t.TempDir()
		var mu sync.Mutex
		var logged []string
		warnings := func() int { mu.Lock(); defer mu.Unlock(); return len(logged) }
		w := &ConntrackWatch{Root: root, Log: func(_ courierlog.Priority, m string) { mu.Lock(); logged = append(logged, m); mu.Unlock() }}
		count := func(n string) {
			writeConntrack(t, root, map[string]string{"proc/sys/net/netfilter/nf_conntrack_count": n})
		}
		writeConntrack(t, root, map[string]string{"proc/sys/net/netfilter/nf_conntrack_max": "4096"})
		reads := func(want int) {
			t.Helper()
			if c, ok := w.Last(); !ok || c.Count != want {
				t.Fatalf("last reading %+v %v, want %d entries", c, ok, want)
			}
		}
		count("3400")
		w.SetInterval(10 * time.Second)
		reads(3400)
		if warnings() != 1 {
			t.Fatalf("turned on over 80%%: %d warnings", warnings())
		}
		time.Sleep(5 * time.Second)
		w.SetInterval(4 * time.Second) // re-timed halfway to the old tick
		if w.Interval() != 4*time.Second {
			t.Fatalf("interval %v", w.Interval())
		}
		reads(3400) // kept
		count("3500")
		time.Sleep(4*time.Second - time.Millisecond)
		synctest.Wait()
		reads(3400) // not read yet
		time.Sleep(time.Millisecond)
		synctest.Wait()
		reads(3500) // the new interval, counted from the re-time
		if warnings() != 1 {
			t.Fatalf("warned again after a re-time: %q", logged)
		}
		w.SetInterval(4 * time.Second) // the same: nothing changes
		w.SetInterval(0)
		if _, ok := w.Last(); ok || w.Interval() != 0 {
			t.Fatal("a reading kept after the watch was turned off")
		}
		count("1000")
		time.Sleep(time.Minute)
		synctest.Wait()
		if _, ok := w.Last(); ok {
			t.Fatal("the watch read the table while off")
		}
		count("3400")
		w.SetInterval(time.Second) // on again: as at start
		reads(3400)
		if warnings() != 2 {
			t.Fatalf("turned on again over 80%%: %q", logged)
		}
		w.SetInterval(0)
	})
}
