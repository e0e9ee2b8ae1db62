package main

import (
	"fmt"
	"io"
	"sort"

	"github.com/BurntSushi/toml"

	"imapgate/config"
)

// checkRuntime does what -check can beyond the file's syntax: it loads the
// certificates and checks the open-file limit, as a start would.
func checkRuntime(cfg *config.Config, f flags) error {
	if _, err := buildStore(cfg, f.demo); err != nil {
		return err
	}
	_, err := checkOpenFiles(cfg, f.demo)
	return err
}

// printSettings prints the effective settings, marking those the file set.
func printSettings(w io.Writer, cfg *config.Config) {
	var flat map[string]any
	b, _ := toml.Marshal(cfg)
	toml.Unmarshal(b, &flat)
	lines := map[string]string{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			key := prefix + k
			if sub, ok := v.(map[string]any); ok && k != "action" {
				walk(key+".", sub)
				continue
			}
			lines[key] = fmt.Sprintf("%v", v)
		}
	}
	walk("", flat)
	keys := make([]string, 0, len(lines))
	for k := range lines {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-36s = %-28s (%s)\n", k, lines[k], cfg.Origin(k))
	}
}
