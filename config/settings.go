package config

import (
	"encoding"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// Setting is one effective key, for -check.
type Setting struct {
	Key    string // dotted; elements of array tables as "limits.override[0].cidr"
	Value  string // in TOML syntax; a secret's value is "(set)"
	Origin string // "file", a courier file and line, or "default"
}

// Settings lists every key in the file's order, each with its value and
// where it came from. Empty lists are listed too; fields tagged
// secret:"true" (admin.token) show "(set)" instead of their value.
func (c *Config) Settings() []Setting {
	var out []Setting
	c.settings(&out, "", "", reflect.ValueOf(*c))
	return out
}

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()

// settings appends the leaves of v. key is the printed prefix, origin the
// prefix Origin knows (without element indexes).
func (c *Config) settings(out *[]Setting, key, origin string, v reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		fv := v.Field(i)
		k, o := key+name, origin+name
		switch {
		case f.Tag.Get("secret") == "true":
			val := `""`
			if !fv.IsZero() {
				val = "(set)"
			}
			*out = append(*out, Setting{k, val, c.Origin(o)})
		case fv.Kind() == reflect.Struct && !fv.Type().Implements(textMarshaler):
			c.settings(out, k+".", o+".", fv)
		case fv.Kind() == reflect.Map:
			keys := make([]string, 0, fv.Len())
			for _, mk := range fv.MapKeys() {
				keys = append(keys, mk.String())
			}
			sort.Strings(keys)
			for _, mk := range keys {
				*out = append(*out, Setting{k + "." + mk, tomlValue(fv.MapIndex(reflect.ValueOf(mk))), c.Origin(o + "." + mk)})
			}
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct &&
			!fv.Type().Elem().Implements(textMarshaler):
			// An array of tables: [[tls.sni]], [[limits.override]].
			if fv.Len() == 0 {
				*out = append(*out, Setting{k, "[]", c.Origin(o)})
			}
			for j := 0; j < fv.Len(); j++ {
				c.settings(out, fmt.Sprintf("%s[%d].", k, j), o+".", fv.Index(j))
			}
		case fv.Kind() == reflect.Pointer:
			if !fv.IsNil() { // unset override fields keep the global value
				*out = append(*out, Setting{k, tomlValue(fv.Elem()), c.Origin(o)})
			}
		default:
			*out = append(*out, Setting{k, tomlValue(fv), c.Origin(o)})
		}
	}
}

// tomlValue writes a leaf as it would appear in the file.
func tomlValue(v reflect.Value) string {
	if m, ok := v.Interface().(encoding.TextMarshaler); ok {
		b, _ := m.MarshalText()
		return strconv.Quote(string(b))
	}
	switch v.Kind() {
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = tomlValue(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return fmt.Sprint(v.Interface())
}
