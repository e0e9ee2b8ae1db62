package config

import (
	"strings"
)

// locator finds the line of a key in a TOML text. BurntSushi/toml reports
// positions for syntax errors only, so unknown keys and bad values are
// placed by scanning table headers and "key =" lines.
type locator struct {
	lines map[string][]int // dotted key -> lines, one per array-table element
}

func newLocator(text string) *locator {
	l := &locator{lines: make(map[string][]int)}
	table := ""
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case line == "" || line[0] == '#':
		case strings.HasPrefix(line, "[["):
			table = strings.TrimSpace(strings.Trim(line[:strings.Index(line+"]]", "]]")], "[] "))
			l.lines[table] = append(l.lines[table], i+1)
		case line[0] == '[':
			table = strings.TrimSpace(strings.Trim(line[:strings.Index(line+"]", "]")], "[] "))
			l.lines[table] = append(l.lines[table], i+1)
		default:
			k, _, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			key := strings.Trim(strings.TrimSpace(k), `"'`)
			if table != "" {
				key = table + "." + key
			}
			l.lines[key] = append(l.lines[key], i+1)
		}
	}
	return l
}

// line returns the line of key's index-th occurrence (array tables), or of
// the innermost enclosing table that appears, or 0.
func (l *locator) line(key string, index int) int {
	for k := key; k != ""; {
		if ls := l.lines[k]; len(ls) > 0 {
			return ls[min(index, len(ls)-1)]
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}
