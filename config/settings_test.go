package config

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// -check lists every key the example file documents, empty lists included.
func TestSettingsListEveryKey(t *testing.T) {
	var example map[string]any
	if _, err := toml.DecodeFile("../imapgate.example.toml", &example); err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	for _, s := range Default().Settings() {
		if _, dup := listed[s.Key]; dup {
			t.Errorf("%s listed twice", s.Key)
		}
		listed[s.Key] = s.Value
	}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			if _, ok := listed[prefix+k]; !ok {
				t.Errorf("%s is in the example file but not listed", prefix+k)
			}
		}
	}
	walk("", example)
	for _, k := range []string{"listen.proxy_protocol_from", "tls.sni", "limits.allow", "limits.deny", "limits.exempt", "limits.dry_run", "limits.override"} {
		if listed[k] != "[]" {
			t.Errorf("%s = %q, want []", k, listed[k])
		}
	}
}

func TestSettingsValuesOriginsAndSecrets(t *testing.T) {
	c, err := Parse("f.toml", `
[limits]
deny = ["192.0.2.0/24", "2001:db8::1"]
[limits.action]
max_per_ip = "close"
[[limits.override]]
cidr = "198.51.100.7"
max_per_ip = 500
[admin]
token = "s3cret-token"
`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Setting{}
	for _, s := range c.Settings() {
		got[s.Key] = s
		if strings.Contains(s.Value, "s3cret") {
			t.Errorf("%s shows the secret: %s", s.Key, s.Value)
		}
	}
	for key, want := range map[string]Setting{
		"limits.deny":                        {Value: `["192.0.2.0/24", "2001:db8::1/128"]`, Origin: "file"},
		"limits.allow":                       {Value: "[]", Origin: "default"},
		"limits.action.max_per_ip":           {Value: `"close"`, Origin: "file"},
		"limits.action.max_per_prefix":       {Value: `"bye"`, Origin: "default"},
		"limits.override[0].cidr":            {Value: `"198.51.100.7/32"`, Origin: "file"},
		"limits.override[0].max_per_ip":      {Value: "500", Origin: "file"},
		"admin.token":                        {Value: "(set)", Origin: "file"},
		"listen.address":                     {Value: `":993"`, Origin: "default"},
		"limits.auth_failures.window":        {Value: `"10m0s"`, Origin: "default"},
		"limits.override[0].rate_per_ip":     {}, // unset: keeps the global value, not listed
		"upstream.exec":                      {Value: `["/usr/lib/courier/courier/imaplogin", "/usr/bin/imapd", "Maildir"]`, Origin: "default"},
		"limits.auth_failures.max_delay":     {Value: `"10s"`, Origin: "default"},
		"limits.override[0].max_per_user_ip": {},
	} {
		s := got[key]
		if s.Value != want.Value || s.Origin != want.Origin {
			t.Errorf("%s = %s (%s), want %s (%s)", key, s.Value, s.Origin, want.Value, want.Origin)
		}
	}
	for _, s := range Default().Settings() {
		if (s.Key == "admin.token" || s.Key == "cluster.redis") && s.Value != `""` {
			t.Errorf("empty secret shown as %+v", s)
		}
	}
}
