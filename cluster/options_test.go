package cluster

import (
	"strings"
	"testing"
)

// The URL forms of the README: which mode rueidis will use (Sentinel by
// master_set; otherwise it asks the server whether it is a cluster node),
// the credentials of Redis and of the sentinels, and errors that never
// quote a password.
func TestParseURL(t *testing.T) {
	tests := []struct {
		name, url                    string
		addrs                        []string
		user, pass, master           string
		sentUser, sentPass, redacted string
		err                          string
		tls                          bool
		db                           int
	}{
		{name: "single", url: "redis://imapgate:pw@10.0.0.5:6379",
			addrs: []string{"10.0.0.5:6379"}, user: "imapgate", pass: "pw", redacted: "redis://imapgate:xxxxx@10.0.0.5:6379"},
		{name: "tls", url: "rediss://imapgate:pw@redis.example:6380", tls: true,
			addrs: []string{"redis.example:6380"}, user: "imapgate", pass: "pw"},
		{name: "cluster nodes", url: "redis://imapgate:pw@10.0.0.5:6379?addr=10.0.0.6:6379&addr=10.0.0.7:6379",
			addrs: []string{"10.0.0.5:6379", "10.0.0.6:6379", "10.0.0.7:6379"}, user: "imapgate", pass: "pw"},
		{name: "sentinel", url: "redis://imapgate:pw@10.0.0.5:26379?addr=10.0.0.6:26379&master_set=imapgate",
			addrs: []string{"10.0.0.5:26379", "10.0.0.6:26379"}, user: "imapgate", pass: "pw", master: "imapgate"},
		{name: "sentinel with auth", url: "redis://imapgate:pw@10.0.0.5:26379?master_set=imapgate&sentinel_username=sentinel&sentinel_password=spw",
			addrs: []string{"10.0.0.5:26379"}, user: "imapgate", pass: "pw", master: "imapgate", sentUser: "sentinel", sentPass: "spw",
			redacted: "redis://imapgate:xxxxx@10.0.0.5:26379?master_set=imapgate&sentinel_password=xxxxx&sentinel_username=sentinel"},
		{name: "sentinel password only", url: "redis://imapgate:pw@h:26379?master_set=m&sentinel_password=spw",
			addrs: []string{"h:26379"}, user: "imapgate", pass: "pw", master: "m", sentPass: "spw"},
		{name: "unix socket", url: "unix://imapgate:pw@/run/redis/redis-server.sock?db=2",
			addrs: []string{"/run/redis/redis-server.sock"}, user: "imapgate", pass: "pw", db: 2,
			redacted: "unix://imapgate:xxxxx@/run/redis/redis-server.sock?db=2"},
		{name: "unix socket, no user", url: "unix:///run/redis/redis-server.sock", addrs: []string{"/run/redis/redis-server.sock"}},
		{name: "unix socket with a host", url: "unix://run/redis/redis.sock", err: "not a host"},
		{name: "unknown key", url: "redis://u:pw@h:1?sentinel_pass=pw", err: `unknown query key "sentinel_pass"`},
		{name: "sentinel keys without master_set", url: "redis://u:pw@h:1?sentinel_username=s&sentinel_password=pw", err: "need master_set"},
		{name: "sentinel user without password", url: "redis://u:pw@h:1?master_set=m&sentinel_username=s", err: "without sentinel_password"},
		{name: "two master_sets", url: "redis://u:pw@h:1?master_set=a&master_set=b", err: `"master_set" given 2 times`},
		{name: "bad scheme", url: "http://u:pw@h:1", err: "want redis://"},
		{name: "no host", url: "redis://u:pw@:1", err: "no host"},
		{name: "port not a number", url: "redis://u:pw@h:1:%zz", err: "port is not a number"},
		{name: "bad escape", url: "redis://u:p%zzw@h:1", err: "%25"},
		{name: "database in the path", url: "redis://u:pw@h:1/2", addrs: []string{"h:1"}, user: "u", pass: "pw", db: 2},
		{name: "database in the query", url: "redis://u:pw@h:1?db=3", addrs: []string{"h:1"}, user: "u", pass: "pw", db: 3},
		{name: "path of a slash", url: "redis://u:pw@h:1/", addrs: []string{"h:1"}, user: "u", pass: "pw"},
		{name: "no port", url: "redis://u:pw@h", addrs: []string{"h:6379"}, user: "u", pass: "pw"},
		{name: "path not a number", url: "redis://u:pw@h:1/abc", err: `the URL's path "/abc": want a database number`},
		{name: "path of two parts", url: "redis://u:pw@h:1/1/2", err: "more than one part"},
		{name: "database with Redis Cluster", url: "redis://u:pw@h:1/1?addr=h2:1", err: "Redis Cluster has only database 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := ParseURL(tt.url)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				if strings.Contains(err.Error(), "pw") {
					t.Fatalf("the error quotes a password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(o.InitAddress, ",") != strings.Join(tt.addrs, ",") || o.Username != tt.user || o.Password != tt.pass ||
				o.Sentinel.MasterSet != tt.master || o.Sentinel.Username != tt.sentUser || o.Sentinel.Password != tt.sentPass ||
				(o.TLSConfig != nil) != tt.tls || o.SelectDB != tt.db {
				t.Fatalf("got addrs %v user %q pass %q master %q sentinel %q/%q tls %v db %d", o.InitAddress, o.Username, o.Password,
					o.Sentinel.MasterSet, o.Sentinel.Username, o.Sentinel.Password, o.TLSConfig != nil, o.SelectDB)
			}
			r := RedactURL(tt.url)
			if strings.Contains(r, "pw") {
				t.Fatalf("RedactURL = %q keeps a password", r)
			}
			if tt.redacted != "" && r != tt.redacted {
				t.Fatalf("RedactURL = %q, want %q", r, tt.redacted)
			}
		})
	}
}
