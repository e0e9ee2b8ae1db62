// Package imapgate holds the example configuration, imapgate.example.toml,
// embedded so that the binary's manual page (imapgate -manpage) is made
// from the same file that documents every key and its default.
package imapgate

import _ "embed"

// ExampleConfig is imapgate.example.toml.
//
//go:embed imapgate.example.toml
var ExampleConfig string
