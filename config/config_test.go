package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestExampleFileDocumentsTheDefaults(t *testing.T) {
	c, err := Load("../imapgate.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.TLS.Cert = "/etc/imapgate/imapd.pem"
	c.defined, want.defined = nil, nil
	normalise := func(c *Config) { // empty lists decode as empty, default as nil
		c.Listen.ProxyProtocolFrom = nil
		c.TLS.SNI = nil
		c.Limits.Allow, c.Limits.Deny, c.Limits.Exempt, c.Limits.DryRun = nil, nil, nil, nil
	}
	normalise(c)
	normalise(want)
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("imapgate.example.toml differs from Default():\n file %+v\n code %+v", c, want)
	}
	// Every key the code knows is set in the example, so none goes
	// undocumented: the keys are those of Default() encoded as TOML.
	if missing := keysMissingFrom(t, Default(), "../imapgate.example.toml"); len(missing) > 0 {
		t.Errorf("example lacks %v", missing)
	}
}

func keysMissingFrom(t *testing.T, c *Config, file string) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		t.Fatal(err)
	}
	var all map[string]any
	if _, err := toml.Decode(buf.String(), &all); err != nil {
		t.Fatal(err)
	}
	example, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			if !example.IsSet(prefix + k) {
				missing = append(missing, prefix+k)
			}
		}
	}
	walk("", all)
	if len(all) == 0 {
		t.Fatal("no keys found in Default()")
	}
	return missing
}

func TestErrorsNameFileLineAndKey(t *testing.T) {
	tests := []struct {
		name, text string
		line       int
		key, msg   string
	}{
		{"unknown key", "[limits]\nmax_per_ipp = 3\n", 2, "limits.max_per_ipp", "unknown key"},
		// A typo of a key of the same table is named.
		{"unknown key, a typo", "[cluster]\nnode_tll = \"5s\"\n", 2, "cluster.node_tll", "unknown key (did you mean node_ttl?)"},
		{"unknown key, a missing _", "[cluster]\nkeyprefix = \"x\"\n", 2, "cluster.keyprefix", "(did you mean key_prefix?)"},
		{"unknown key in an array table", "[[limits.override]]\ncidr = \"192.0.2.1\"\nmax_per_ipx = 5\n", 3, "limits.override.max_per_ipx", "(did you mean max_per_ip?)"},
		{"unknown table, a typo", "[limts]\n", 1, "limts", "(did you mean limits?)"},
		{"bad duration", "[timeouts]\n\nhandshake = \"ten\"\n", 3, "handshake", "not a duration"},
		{"bare number duration", "[timeouts]\nhandshake = 10\n", 2, "", ""},
		{"negative limit", "[limits]\nmax_per_ip = -1\n", 2, "limits.max_per_ip", "must not be negative"},
		{"impossible combination", "[limits]\nmax_per_ip = 4\nmax_preauth_per_ip = 10\n", 3, "limits.max_preauth_per_ip", "above max_per_ip"},
		{"embedded with proxy header", "[upstream]\naddress = \"embedded\"\nproxy_protocol = \"v1\"\n", 2, "upstream.address", "embedded"},
		{"bad action", "[limits.action]\nmax_per_ip = \"wait\"\n", 2, "limits.action.max_per_ip", "wait"},
		{"unknown limit in dry_run", "[limits]\ndry_run = [\"max_per_ipp\"]\n", 2, "limits.dry_run", "no such limit"},
		{"bad cidr", "[limits]\nexempt = [\"192.0.2.300\"]\n", 2, "", "not an address"},
		{"override without cidr", "[[limits.override]]\nmax_per_ip = 3\n", 1, "limits.override.cidr", "required"},
		{"short idle timeout", "[timeouts]\nestablished = \"10s\"\n", 2, "timeouts.established", "IDLE"},
		// Syntax errors name the line the mistake is on, also when the
		// parser noticed it at the newline.
		{"table header without ]", "[limits\n", 1, "", "end table name"},
		{"table header without ] later", "[listen]\naddress = \":993\"\n\n[limits\nmax_per_ip = 3\n", 4, "", "end table name"},
		{"array table header without ]]", "[[limits.override\ncidr = \"192.0.2.1\"\n", 1, "", "end table name"},
		{"missing closing quote", "[log]\noutput = \"stderr\ntag = \"x\"\n", 2, "log.output", "newlines"},
		{"missing closing quote, comment before", "[log]\n# the output\noutput = \"stderr\n", 3, "log.output", "newlines"},
		{"duplicate key", "[limits]\nmax_per_ip = 3\nmax_per_ip = 4\n", 3, "limits.max_per_ip", "already been defined"},
		{"duplicate table", "[limits]\nmax_per_ip = 3\n[admin]\n[limits]\n", 4, "", "already been defined"},
		{"key without value", "[limits]\nmax_per_ip\n", 2, "", "expected '.' or '='"},
		{"bad table header", "[limits]]\nmax_per_ip = 3\n", 1, "", ""},
		{"log output", "[log]\noutput = \"file:relative.log\"\n", 2, "log.output", "absolute"},
		{"syslog socket", "[log]\noutput = \"syslog:dev/log\"\n", 2, "log.output", "absolute"},
		{"auth min_users", "[limits.auth_failures]\nfailures = 5\nmin_users = 9\n", 3, "limits.auth_failures.min_users", "1..8"},
		{"negative spray", "[limits.auth_failures]\nspray_failures = -1\n", 2, "limits.auth_failures.spray_failures", "negative"},
		{"known_good window", "[limits.known_good]\n\nwindow = \"0s\"\n", 3, "limits.known_good.window", "positive"},
		{"known_good min_users", "[limits.known_good]\nmin_users = 20\n", 2, "limits.known_good.min_users", "0 (off)"},
		{"redis scheme", "[cluster]\nredis = \"http://h:1\"\n", 2, "cluster.redis", "want redis://"},
		{"redis query key", "[cluster]\nnode = \"a\"\nredis = \"redis://u:SECRET@h:1?master=x\"\n", 3, "cluster.redis", `unknown query key "master"`},
		{"redis sentinel auth without master_set", "[cluster]\nredis = \"redis://h:26379?sentinel_username=s&sentinel_password=SECRET\"\n", 2, "cluster.redis", "need master_set"},
		{"redis addr", "[cluster]\nredis = \"redis://h:1?addr=h2\"\n", 2, "cluster.redis", "want host:port"},
		{"redis db", "[cluster]\nredis = \"redis://h:1?db=x\"\n", 2, "cluster.redis", "database number"},
		{"redis port range", "[cluster]\nredis = \"redis://u:SECRET@h:99999\"\n", 2, "cluster.redis", "port 99999: want 1 to 65535"},
		{"redis port zero", "[cluster]\nredis = \"redis://h:0\"\n", 2, "cluster.redis", "port 0: want 1 to 65535"},
		{"redis addr port range", "[cluster]\nredis = \"redis://h:1?addr=h2:99999\"\n", 2, "cluster.redis", "want 1 to 65535"},
		{"redis port not a number", "[cluster]\nredis = \"redis://u:SECRET@h:notaport\"\n", 2, "cluster.redis", "port is not a number"},
		{"redis bad escape", "[cluster]\nredis = \"redis://u:SE%zzCRET@h:1\"\n", 2, "cluster.redis", "%25"},
		{"redis unix with a host", "[cluster]\nredis = \"unix://run/redis/redis.sock\"\n", 2, "cluster.redis", `not a host ("run")`},
		{"redis unix without a path", "[cluster]\nredis = \"unix://u:SECRET@/?db=1\"\n", 2, "cluster.redis", "without the socket's path"},
		{"redis unix with addr", "[cluster]\nredis = \"unix://u:SECRET@/run/redis.sock?addr=h:1\"\n", 2, "cluster.redis", "unix:// names one Redis on this host"},
		{"redis unix with master_set", "[cluster]\nredis = \"unix:///run/redis.sock?master_set=m\"\n", 2, "cluster.redis", "addr and master_set are for redis://"},
		{"redis no host", "[cluster]\nredis = \"redis://:SECRET@:1\"\n", 2, "cluster.redis", "no host"},
		// The database number in the path, checked here rather than when
		// connecting: file, line and key, and a % there named as the path's.
		{"redis path not a number", "[cluster]\nnode = \"a\"\nredis = \"redis://u:SECRET@h:1/abc\"\n", 3, "cluster.redis", `the URL's path "/abc": want a database number`},
		{"redis path of two parts", "[cluster]\nredis = \"redis://u:SECRET@h:1/1/2\"\n", 2, "cluster.redis", `the URL's path "/1/2" has more than one part`},
		{"redis path negative", "[cluster]\nredis = \"redis://h:1/-1\"\n", 2, "cluster.redis", "want a database number"},
		{"redis path bad escape", "[cluster]\nredis = \"redis://u:SECRET@h:1/%zz\"\n", 2, "cluster.redis", "a % in the URL's path, where only a database number goes"},
		{"redis query bad escape", "[cluster]\nredis = \"redis://u:SECRET@h:1?master_set=%zz\"\n", 2, "cluster.redis", "no escape in the query"},
		{"redis host bad escape", "[cluster]\nredis = \"redis://u:SECRET@h%zz:1\"\n", 2, "cluster.redis", "no escape in the host"},
		{"redis slash in password", "[cluster]\nredis = \"redis://u:SEC/RET@h:1\"\n", 2, "cluster.redis", "a / in the user or password? write it there as %2F"},
		{"redis slash in password, port", "[cluster]\nredis = \"redis://u:SE@C/RET@h:1\"\n", 2, "cluster.redis", "a / in the user or password?"},
		{"redis db twice", "[cluster]\nredis = \"redis://h:1/2?db=3\"\n", 2, "cluster.redis", "a database number twice"},
		{"redis db with Redis Cluster", "[cluster]\nredis = \"redis://h:1?addr=h2:1&db=2\"\n", 2, "cluster.redis", "Redis Cluster has only database 0"},
		{"redis path db with Redis Cluster", "[cluster]\nredis = \"redis://h:1/2?addr=h2:1\"\n", 2, "cluster.redis", "Redis Cluster has only database 0"},
		// The ranges the messages (and the README) give.
		{"cluster timeout under 1ms", "[cluster]\nredis = \"redis://h\"\ntimeout = \"500us\"\n", 3, "cluster.timeout", "must be between 1ms and 1s, got 500µs"},
		{"cluster timeout over 1s", "[cluster]\nredis = \"redis://h\"\ntimeout = \"2s\"\n", 3, "cluster.timeout", "must be between 1ms and 1s"},
		{"cluster over_limit_hold under 1ms", "[cluster]\nredis = \"redis://h\"\nover_limit_hold = \"10us\"\n", 3, "cluster.over_limit_hold", "must be between 1ms and 1m"},
		// [cluster] is off without redis: a key set there says otherwise.
		{"cluster node without redis", "[cluster]\nnode = \"mx1\"\n", 2, "cluster.node",
			"cluster.node is set but cluster.redis is empty: [cluster] is off without it"},
		{"cluster key_prefix with empty redis", "[cluster]\nredis = \"\"\nnode = \"\"\nkey_prefix = \"x\"\n", 4, "cluster.key_prefix", "cluster.redis is empty"},
		{"cluster timeout without redis", "[cluster]\ntimeout = \"50ms\"\nnode_ttl = \"5s\"\n", 3, "cluster.node_ttl", "cluster.redis is empty"},
		{"kernel table name", "[kernel]\nnftables = true\ntable = \"my-gate\"\n", 3, "kernel.table", "nftables table name"},
		{"negative prefix_addresses", "[kernel.escalation]\nprefix_addresses = -1\n", 2, "kernel.escalation.prefix_addresses", "negative"},
		{"escalation first over max", "[kernel.escalation]\nrefusals = 10\nmax = \"1m\"\nfirst = \"2m\"\n", 3, "kernel.escalation.max", "at least first (2m0s)"},
		{"escalation window zero", "[kernel.escalation]\n\nwindow = \"0s\"\n", 3, "kernel.escalation.window", "positive"},
		{"conntrack_watch too often", "[kernel]\nconntrack_watch = \"1ms\"\n", 2, "kernel.conntrack_watch", "between 1s and 1h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("imapgate.toml", tt.text)
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("err = %v, want config errors", err)
			}
			e := es[0]
			if e.File != "imapgate.toml" || e.Line != tt.line || (tt.key != "" && !strings.Contains(e.Key, tt.key)) ||
				!strings.Contains(e.Error(), tt.msg) {
				t.Fatalf("got %q (line %d key %q), want line %d key %q msg %q", e.Error(), e.Line, e.Key, tt.line, tt.key, tt.msg)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("the error quotes the password: %v", err)
			}
		})
	}
}

// A syntax error names its line and column, and a key only when the
// mistake is on that key's line: the parser's last key is often a table
// above it ([log] for an unclosed [limits]).
func TestSyntaxErrorsNameLineColumnAndOnlyTheirKey(t *testing.T) {
	tests := []struct {
		name, text string
		line, col  int
		key, msg   string
	}{
		{"table header without ] after [log]", "[tls]\ncert = \"x.pem\"\n\n[log]\noutput = \"stderr\"\n\n[limits\nmax_per_ip = 3\n", 7, 8, "", "end table name"},
		{"array table header without ]] after a key", "[log]\noutput = \"stderr\"\n[[limits.override\n", 3, 18, "", "end table name"},
		{"junk after a value", "[limits]\nmax_per_ip = 3x\n", 2, 15, "", "but got 'x'"},
		{"key without value", "[log]\ntag = \"x\"\n[limits]\nmax_per_ip\n", 4, 11, "", "expected '.' or '='"},
		{"missing closing quote", "[log]\noutput = \"stderr\ntag = \"x\"\n", 2, 17, "log.output", "newlines"},
		{"duplicate key", "[limits]\nmax_per_ip = 3\nmax_per_ip = 4\n", 3, 1, "limits.max_per_ip", "already been defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("imapgate.toml", tt.text)
			var es Errors
			if !errors.As(err, &es) || len(es) != 1 {
				t.Fatalf("err = %v, want one config error", err)
			}
			e := es[0]
			if e.Line != tt.line || e.Col != tt.col || e.Key != tt.key || !strings.Contains(e.Msg, tt.msg) {
				t.Fatalf("got %q (line %d col %d key %q), want line %d col %d key %q msg %q", e, e.Line, e.Col, e.Key, tt.line, tt.col, tt.key, tt.msg)
			}
			want := fmt.Sprintf("imapgate.toml:%d:%d: ", tt.line, tt.col)
			if tt.key != "" {
				want += tt.key + ": "
			}
			if !strings.HasPrefix(e.Error(), want+e.Msg) {
				t.Errorf("Error() = %q, want %q", e.Error(), want+e.Msg)
			}
		})
	}
}

// A key that holds a table refuses any other value with the file, line and
// key, a map's (limits.action) as a struct's: the decoder skipped a map's,
// and every action kept its default. A table, inline or not, is accepted.
func TestTableKeysRefuseOtherValues(t *testing.T) {
	var tables []string
	walkKeys(reflect.TypeFor[Config](), "", func(key string, ft reflect.Type) {
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Map || ft.Kind() == reflect.Struct && !ft.Implements(textMarshaler) && !reflect.PointerTo(ft).Implements(textMarshaler) {
			tables = append(tables, key)
		}
	})
	if !slices.Contains(tables, "limits.action") || !slices.Contains(tables, "limits.override") || len(tables) < 15 {
		t.Fatalf("table keys found: %v", tables)
	}
	for _, key := range tables {
		values := []string{`"bye"`, `["bye"]`, `5`}
		if !strings.HasPrefix(key, "tls.sni") && !strings.HasPrefix(key, "limits.override") { // arrays of tables
			values = append(values, `[{ max_per_ip = "bye" }]`)
		}
		for _, v := range values {
			text := "# imapgate\n" + key + " = " + v + "\n"
			if parent, name, ok := cutLast(key); ok {
				text = "# imapgate\n[" + parent + "]\n" + name + " = " + v + "\n"
			}
			_, err := Parse("imapgate.toml", text)
			var es Errors
			if !errors.As(err, &es) || len(es) != 1 || es[0].Line != strings.Count(text, "\n") || es[0].Key != key {
				t.Errorf("%q: err = %v, want one error at its line naming %s", text, err, key)
			}
		}
	}
	if _, err := Parse("imapgate.toml", "[[limits.action]]\nmax_per_ip = \"bye\"\n"); err == nil ||
		err.Error() != "imapgate.toml:1: limits.action: type mismatch: expected table but found array of tables" {
		t.Errorf("[[limits.action]]: %v", err)
	}
	for _, text := range []string{"[limits.action]\nmax_per_ip = \"bye\"\n", "[limits]\naction = { max_per_ip = \"bye\" }\n"} {
		c, err := Parse("imapgate.toml", text)
		if err != nil || c.Limits.Action["max_per_ip"] != "bye" || c.Limits.Action["max_preauth_per_ip"] != Default().Limits.Action["max_preauth_per_ip"] {
			t.Errorf("%q: err %v, action %v", text, err, c.Limits.Action)
		}
	}
}

func cutLast(key string) (parent, name string, ok bool) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 {
		return "", key, false
	}
	return key[:i], key[i+1:], true
}

// Lowering max_per_ip alone lowers max_preauth_per_ip with it, and -check
// says so rather than calling the lowered value the default.
func TestPreauthLoweredWithMaxPerIPSaysSo(t *testing.T) {
	c, err := Parse("imapgate.toml", "[limits]\nmax_per_ip = 2\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxPreauthPerIP != 2 {
		t.Fatalf("max_preauth_per_ip %d, want 2 (lowered with max_per_ip)", c.Limits.MaxPreauthPerIP)
	}
	if o := c.Origin("limits.max_preauth_per_ip"); o != "default, lowered to max_per_ip" {
		t.Fatalf("origin %q", o)
	}
}

// Several problems come in the file's order, as an admin fixes them.
func TestErrorsInFileOrder(t *testing.T) {
	text := "[limits]\nmax_per_ip = -1\n[kernel]\nconntrack_watch = \"1ms\"\n[tls]\nmin_version = \"1.0\"\n[admin]\nbogus = 1\n"
	_, err := Parse("imapgate.toml", text)
	var es Errors
	if !errors.As(err, &es) || len(es) < 4 {
		t.Fatalf("err = %v, want four problems", err)
	}
	for i := 1; i < len(es); i++ {
		if es[i].Line < es[i-1].Line {
			t.Fatalf("problems out of the file's order:\n%v", err)
		}
	}
}

// A key like none of its table's gets no suggestion; a key is never
// suggested from another table.
func TestSuggestKeyOnlyLikelyTypos(t *testing.T) {
	for key, want := range map[string]string{
		"tls.frobnicate": "", "cluster.max_per_ip": "", "limits.node_ttl": "",
		"cluster.node_tll": "node_ttl", "limits.maxperip": "max_per_ip", "limits.max_perip": "max_per_ip", "limits.something": "",
	} {
		if got := suggestKey(key); got != want {
			t.Errorf("suggestKey(%q) = %q, want %q", key, got, want)
		}
	}
}
