package config

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/BurntSushi/toml"
)

// mapKeys lists the dotted keys that decode into a Go map (limits.action).
// The TOML decoder refuses anything but a table for a struct or a slice of
// them, but skips it silently for a map (BurntSushi/toml v1.6.0's
// unifyMap), so that every entry would keep its default; checkMapTables
// refuses it instead.
var mapKeys = sync.OnceValue(func() map[string]bool {
	keys := make(map[string]bool)
	walkKeys(reflect.TypeFor[Config](), "", func(key string, ft reflect.Type) {
		if ft.Kind() == reflect.Map {
			keys[key] = true
		}
	})
	return keys
})

// checkMapTables returns an error, with the line and key, for each key of
// mapKeys that the file set to something other than a table, worded as
// the decoder's own type errors are.
func checkMapTables(md toml.MetaData, name string, loc *locator) Errors {
	var errs Errors
	for _, k := range md.Keys() {
		key := k.String()
		if !mapKeys()[key] {
			continue
		}
		if t := md.Type(k...); t != "Hash" {
			errs = append(errs, &Error{File: name, Line: loc.line(key, 0), Key: key,
				Msg: fmt.Sprintf("type mismatch: expected table but found %s", tomlTypeName(t))})
		}
	}
	return errs
}

// tomlTypeName is a type as md.Type gives it ("String", "ArrayHash") in
// the words of a TOML file.
func tomlTypeName(t string) string {
	if t == "ArrayHash" {
		return "array of tables"
	}
	return strings.ToLower(t)
}
