package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The manual page is generated from the flag sets and the example file, so
// it lists every flag and every key; groff reads it without warnings.
func TestManPage(t *testing.T) {
	out, err := exec.Command(binary, "-manpage").Output()
	if err != nil {
		t.Fatal(err)
	}
	page := string(out)
	var f flags
	fss := []*flag.FlagSet{f.flagSet()}
	ctlFS, _, _, _, _ := ctlFlagSet()
	fss = append(fss, ctlFS)
	for _, fs := range fss {
		fs.VisitAll(func(fl *flag.Flag) {
			if !strings.Contains(page, `\fB\-`+roffEscape(fl.Name)+`\fR`) {
				t.Errorf("the manual page lacks %s -%s", fs.Name(), fl.Name)
			}
		})
	}
	example, err := os.ReadFile("../../imapgate.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for _, m := range regexp.MustCompile(`(?m)^\s*(\[[^\]]+\]|\w+ = .*)$`).FindAllStringSubmatch(string(example), -1) {
		want := `.SS ` + roffEscape(m[1])
		if !strings.HasPrefix(m[1], "[") {
			want, keys = `\fB`+roffEscape(m[1])+`\fR`, keys+1
		}
		if !strings.Contains(page, want+"\n") {
			t.Errorf("the manual page lacks %q", m[1])
		}
	}
	if keys < 60 {
		t.Errorf("only %d keys found in the example file", keys)
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Log("groff not installed: the page's syntax is not checked")
		return
	}
	cmd := exec.Command(groff, "-man", "-ww", "-z")
	cmd.Stdin = strings.NewReader(page)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("groff -man -ww: %v\n%s", err, stderr.String())
	}
}
