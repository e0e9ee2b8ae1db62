package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time: go build -ldflags "-X main.version=1.2.3".
// Without it the module version Go stamps from the checkout's tag or
// commit is used.
var version string

// buildInfo is what -version prints and imapgate_build_info carries.
type buildInfo struct {
	Version   string // -X main.version, else the module version, else "(devel)"
	GoVersion string
	Revision  string // VCS commit ("-dirty" if the tree was modified), else "unknown"
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, GoVersion: runtime.Version(), Revision: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if b.Version == "" {
			b.Version = bi.Main.Version
		}
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && b.Revision != "unknown" {
			b.Revision += "-dirty"
		}
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	return b
}

func printVersion(w io.Writer, b buildInfo) {
	fmt.Fprintf(w, "imapgate %s (revision %s, %s, %s/%s)\n", b.Version, b.Revision, b.GoVersion, runtime.GOOS, runtime.GOARCH)
}
