package main

import (
	"fmt"
	"io"
	"os"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/gateway"
)

// checkRuntime does what -check can beyond the file's syntax: it loads the
// certificates and checks the open-file limit, as a start would.
func checkRuntime(cfg *config.Config, f flags) error {
	if !f.demo {
		sources, err := gateway.CertSources(cfg)
		if err != nil {
			return err
		}
		if _, err := certs.NewStore(sources); err != nil {
			return err
		}
	}
	of, err := checkOpenFiles(cfg, f.demo)
	if of.short != "" {
		fmt.Fprintln(os.Stderr, "imapgate: warning:", of.short)
	}
	return err
}

// printSettings prints every effective setting and where it came from;
// secrets show "(set)".
func printSettings(w io.Writer, cfg *config.Config) {
	for _, s := range cfg.Settings() {
		fmt.Fprintf(w, "  %-36s = %-28s (%s)\n", s.Key, s.Value, s.Origin)
	}
}
