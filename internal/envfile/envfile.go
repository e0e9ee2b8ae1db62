// Package envfile reads the env files the integration set-up scripts
// write (integration/{courier,dovecot,redis}/setup.sh): one KEY='value'
// per line, so that a shell can source them as they are (a value may hold
// spaces or "&"; none holds a single quote).
package envfile

import (
	"fmt"
	"os"
	"strings"
)

// Parse returns the file's keys and values, a value's single quotes
// removed; lines without "=" are skipped.
func Parse(data []byte) map[string]string {
	env := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = v[1 : len(v)-1]
		}
		env[k] = v
	}
	return env
}

// Read parses the file at path.
func Read(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	return Parse(b), nil
}
