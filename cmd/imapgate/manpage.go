package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"imapgate"
)

// writeManPage writes imapgate(8) in troff (man macros): the options from
// the flag sets themselves and the configuration from the embedded example
// file, so the page cannot drift from either.
func writeManPage(w io.Writer, b buildInfo) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p(`.TH IMAPGATE 8 "" "imapgate %s" "System Administration"`, roffEscape(b.Version))
	p(`.SH NAME`)
	p(`imapgate \- TLS\-terminating IMAP proxy for port 993 in front of courier\-imap`)
	p(`.SH SYNOPSIS`)
	for _, s := range []string{
		`\fBimapgate\fR \fB\-config\fR \fIfile\fR [\fB\-courier\-config\fR \fIfile\fR] [\fB\-grace\fR \fIduration\fR]`,
		`\fBimapgate\fR \fB\-check\fR \fB\-config\fR \fIfile\fR`,
		`\fBimapgate\fR \fB\-demo\fR`,
		`\fBimapgate\fR \fB\-version\fR`,
		`\fBimapgate ctl\fR [\fB\-admin\fR \fIaddr\fR | \fB\-config\fR \fIfile\fR] [\fB\-json\fR] \fIcommand\fR`,
	} {
		p(`.br`)
		p(`%s`, s)
	}
	p(`.SH DESCRIPTION`)
	p(`imapgate terminates TLS for IMAP clients on port 993 and hands each session to an IMAP server`)
	p(`(courier\-imap, Dovecot, any RFC 3501/9051 server) over TCP, or starts courier's imaplogin per session.`)
	p(`It watches the login exchange, enforces connection limits per address, per network, per user and`)
	p(`in total, logs logins and refusals in courier's own syslog format (so fail2ban's courier\-auth filter`)
	p(`works unchanged, with the client's real address), and then relays the session byte for byte.`)
	p(`.PP`)
	p(`At start it raises its soft open\-file limit to the hard one and refuses to start if that cannot hold`)
	p(`\fBtable.max\fR sessions, unless \fBlimits.open_files_check\fR is false, when it warns with the numbers.`)
	p(`.SH OPTIONS`)
	var f flags
	writeFlags(w, f.flagSet())
	p(`.SH CTL`)
	p(`\fBimapgate ctl\fR talks to a running imapgate's admin endpoint (\fBadmin.address\fR, read from`)
	p(`the configuration file, by default %s).`, roffEscape(defaultConfigFile))
	p(`.PP`)
	p(`.nf`)
	_, usage, _ := strings.Cut(ctlUsage, "\n")
	for _, l := range strings.Split(strings.TrimRight(usage, "\n"), "\n") {
		p(`%s`, roffLine(roffEscape(strings.TrimPrefix(l, "  "))))
	}
	p(`.fi`)
	p(`.PP`)
	p(`Options of \fBimapgate ctl\fR:`)
	fs, _, _, _, _ := ctlFlagSet()
	writeFlags(w, fs)
	p(`.SH SIGNALS`)
	p(`.TP`)
	p(`.B SIGHUP`)
	p(`Reload the configuration and the certificates. Everything is read and checked first; a broken file`)
	p(`is logged with file, line and key (a syntax error with file, line and column), and the running configuration stays.`)
	p(`.TP`)
	p(`.BR SIGTERM ", " SIGINT`)
	p(`Stop accepting, send * BYE to sessions still logging in, let logged\-in sessions drain for`)
	p(`\fB\-grace\fR, then close them.`)
	p(`.SH CONFIGURATION`)
	p(`The file is TOML. Every key is shown below with its default; a key left out of the file takes it.`)
	p(`\fBimapgate \-check \-config\fR \fIfile\fR prints every effective setting and where it came from.`)
	writeConfig(w, imapgate.ExampleConfig)
	p(`.SH FILES`)
	p(`.TP`)
	p(`.I %s`, roffEscape(defaultConfigFile))
	p(`The configuration, as in the SYNOPSIS and the unit file; \fBimapgate ctl\fR reads \fBadmin.address\fR from it`)
	p(`unless given \fB\-admin\fR or \fB\-config\fR.`)
	p(`.TP`)
	p(`.I /etc/imapgate/imapd.pem`)
	p(`The certificate chain and key in one PEM file (courier's TLS_CERTFILE layout), readable by the imapgate user.`)
	p(`.SH SEE ALSO`)
	p(`.BR courier (8),`)
	p(`.BR imapd (8),`)
	p(`.BR couriertcpd (1),`)
	p(`.BR systemd.socket (5)`)
}

// writeFlags lists a flag set's flags as tagged paragraphs.
func writeFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(fl *flag.Flag) {
		name, usage := flag.UnquoteUsage(fl)
		fmt.Fprintln(w, ".TP")
		if name != "" {
			fmt.Fprintf(w, "\\fB\\-%s\\fR \\fI%s\\fR\n", roffEscape(fl.Name), roffEscape(name))
		} else {
			fmt.Fprintf(w, "\\fB\\-%s\\fR\n", roffEscape(fl.Name))
		}
		if fl.DefValue != "" && fl.DefValue != "false" {
			usage += " (default " + fl.DefValue + ")"
		}
		fmt.Fprintln(w, roffLine(roffEscape(usage)))
	})
}

// writeConfig turns the example file into one subsection per table, a
// tagged paragraph per key (its line as the tag, the comment above it as
// the text) and the free-standing comments as paragraphs. Comment lines
// indented by more than one space are examples, kept as they are.
func writeConfig(w io.Writer, example string) {
	var comment []string
	flush := func() {
		inExample := false
		for _, c := range comment {
			example := strings.HasPrefix(c, "  ")
			if example != inExample {
				fmt.Fprintln(w, map[bool]string{true: ".RS\n.nf", false: ".fi\n.RE"}[example])
				inExample = example
			}
			fmt.Fprintln(w, roffLine(roffEscape(c)))
		}
		if inExample {
			fmt.Fprintln(w, ".fi\n.RE")
		}
		comment = nil
	}
	started := false // the file's own header comment is not repeated
	for _, raw := range strings.Split(example, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case strings.HasPrefix(line, "#"):
			c := strings.TrimPrefix(line, "#")
			c = strings.TrimPrefix(c, " ")
			comment = append(comment, c)
		case line == "":
			if started && len(comment) > 0 {
				fmt.Fprintln(w, ".PP")
				flush()
			}
			comment = nil
		case strings.HasPrefix(line, "["):
			started = true
			fmt.Fprintf(w, ".SS %s\n", roffEscape(line))
			if len(comment) > 0 {
				flush()
			}
		default:
			started = true
			fmt.Fprintln(w, ".TP")
			fmt.Fprintln(w, roffLine(`\fB`+roffEscape(line)+`\fR`))
			flush()
		}
	}
}

// roffEscape makes text safe inside a troff line: backslashes print as
// such and hyphens as minus signs (option names, paths and values are
// copied and pasted).
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	return strings.ReplaceAll(s, "-", `\-`)
}

// roffLine keeps a text line from being read as a request.
func roffLine(s string) string {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		return `\&` + s
	}
	return s
}
