package config

import (
	"reflect"
	"slices"
	"strings"
	"sync"
)

// knownKeys lists the dotted keys a file may set, tables included; the
// fields of an array of tables ([[limits.override]]) without an index,
// as the TOML decoder names an unknown one.
var knownKeys = sync.OnceValue(func() []string {
	var keys []string
	walkKeys(reflect.TypeFor[Config](), "", func(key string, _ reflect.Type) { keys = append(keys, key) })
	slices.Sort(keys)
	return keys
})

// walkKeys calls visit with every dotted key under t and the Go type of its
// field, a table before the keys in it.
func walkKeys(t reflect.Type, prefix string, visit func(key string, ft reflect.Type)) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		visit(prefix+name, f.Type)
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !ft.Implements(textMarshaler) && !reflect.PointerTo(ft).Implements(textMarshaler) {
			walkKeys(ft, prefix+name+".", visit)
		}
	}
}

// suggestKey returns the known key of the same table closest to an
// unknown one when it looks like a typo of it (Nearest), else "". node_tll
// gives node_ttl.
func suggestKey(key string) string {
	parent, last := "", key
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		parent, last = key[:i+1], key[i+1:]
	}
	var names []string
	for _, k := range knownKeys() {
		if name, ok := strings.CutPrefix(k, parent); ok && !strings.Contains(name, ".") {
			names = append(names, name)
		}
	}
	return Nearest(last, names)
}

// Nearest returns the one of choices closest to word when word looks like
// a typo of it (at most a third of its letters changed, one at least; the
// first of equals), else "". Typos in keys and in ctl's commands use it.
func Nearest(word string, choices []string) string {
	best, bestD := "", max(1, len(word)/3)+1
	for _, c := range choices {
		if d := editDistance(word, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
