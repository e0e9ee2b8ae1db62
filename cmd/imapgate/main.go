// Command imapgate is a TLS-terminating IMAP proxy for port 993 in front of
// courier-imap (or any IMAP server): it watches the login exchange, enforces
// connection limits, logs in courier's own format and relays the session.
//
//	imapgate -demo                    zero-setup demo on 127.0.0.1:9993
//	imapgate -config /etc/imapgate.toml
//	imapgate -check -config FILE      validate and exit (like nginx -t)
//	imapgate -version                 version, VCS revision, Go version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"os/user"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"imapgate/config"
	"imapgate/proxy"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

type flags struct {
	configFile string
	courier    string
	demo       bool
	check      bool
	version    bool
	manpage    bool
	grace      time.Duration
	cpuprofile string
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "ctl" {
		return ctl(args[1:], os.Stdout, os.Stderr)
	}
	var f flags
	fs := f.flagSet()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // -h: the usage was asked for (Parse printed it)
		}
		return 2
	}
	if f.version {
		printVersion(os.Stdout, readBuildInfo())
		return 0
	}
	if f.manpage {
		writeManPage(os.Stdout, readBuildInfo())
		return 0
	}
	if f.configFile == "" && f.courier == "" && !f.demo {
		fmt.Fprintln(os.Stderr, "imapgate: give -config FILE and/or -courier-config /etc/courier/imapd-ssl, or -demo to try it out")
		return 2
	}
	cfg, err := loadConfig(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imapgate:", err)
		return 1
	}
	if f.check {
		if err := checkRuntime(cfg, f); err != nil {
			fmt.Fprintln(os.Stderr, "imapgate:", err)
			return 1
		}
		fmt.Printf("imapgate: configuration %s is valid\n", describe(f))
		printSettings(os.Stdout, cfg)
		return 0
	}
	// Queue SIGHUP and SIGUSR1 from here on: logrotate's SIGUSR1 during
	// the start must not kill the process (the default action) or be lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1)
	a, err := newApp(cfg, f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imapgate:", err)
		return 1
	}
	if f.cpuprofile != "" {
		pf, err := os.Create(f.cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "imapgate:", err)
			return 1
		}
		pprof.StartCPUProfile(pf)
		defer func() { pprof.StopCPUProfile(); pf.Close() }()
	}
	return a.serve(sigs)
}

// flagSet defines the command line; the manual page lists the same flags.
func (f *flags) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("imapgate", flag.ContinueOnError)
	fs.StringVar(&f.configFile, "config", "", "configuration `file` (TOML; see imapgate.example.toml)")
	fs.StringVar(&f.courier, "courier-config", "", "courier's `file` (/etc/courier/imapd-ssl or imapd) to take MAXDAEMONS, MAXPERIP, SSLPORT, TLS_CERTFILE and the access file from; -config overrides it")
	fs.BoolVar(&f.demo, "demo", false, "zero-setup demo: 127.0.0.1:9993, a generated certificate and an in-memory mailbox (demo/demo)")
	fs.BoolVar(&f.check, "check", false, "check the configuration and what it names (certificates, open files, nftables, Redis with [cluster]), print every setting and where it came from, and exit")
	fs.BoolVar(&f.version, "version", false, "print the version, VCS revision and Go version, and exit")
	fs.BoolVar(&f.manpage, "manpage", false, "print the manual page imapgate(8), in troff, and exit")
	fs.StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile to `file` until shutdown (diagnostics)")
	fs.DurationVar(&f.grace, "grace", 30*time.Second, "on SIGTERM, how long logged-in sessions may drain before they are closed")
	return fs
}

func describe(f flags) string {
	switch {
	case f.configFile != "" && f.courier != "":
		return f.configFile + " over " + f.courier
	case f.courier != "":
		return f.courier
	case f.configFile != "":
		return f.configFile
	}
	return "(demo defaults)"
}

// loadConfig reads the file (or the defaults in demo mode) and applies
// what the demo supplies.
func loadConfig(f flags) (*config.Config, error) {
	cfg := config.Default()
	if f.configFile != "" {
		var err error
		if cfg, err = config.Load(f.configFile); err != nil {
			return nil, err
		}
	}
	if f.courier != "" {
		warnings, err := cfg.ApplyCourier(f.courier)
		if err != nil {
			return nil, courierReadHint(err)
		}
		for _, w := range warnings {
			fmt.Fprintln(os.Stderr, "imapgate: warning:", w)
		}
		if err := cfg.Validate(describe(f)); err != nil {
			return nil, err
		}
	}
	if f.demo {
		applyDemo(cfg)
		return cfg, nil
	}
	if cfg.TLS.Cert == "" {
		return nil, &config.Error{File: f.configFile, Key: "tls.cert", Msg: "required (or run with -demo for a generated certificate)"}
	}
	return cfg, nil
}

// courierReadHint adds to a permission error reading courier's files what
// to do: Debian's are root:courier (files 640, the access directory 750),
// and imapgate reads them as the user it runs as.
func courierReadHint(err error) error {
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	who := "this user"
	if u, uerr := user.Current(); uerr == nil {
		who = "user " + u.Username
	}
	return fmt.Errorf("%w (courier's files are root:courier on Debian and %s may not read them: run -check -courier-config as root "+
		"to see the values and write them into imapgate's own -config file, or let it read them: adduser %s courier)",
		err, who, strings.TrimPrefix(who, "user "))
}

// serve runs until SIGTERM/SIGINT. SIGUSR1 reopens the log file (after
// logrotate moved it) or reconnects to syslog; SIGHUP does that too and
// reloads the configuration, each whatever the other's outcome.
func (a *app) serve(sigs chan os.Signal) int {
	errc := make(chan error, len(a.listeners))
	for _, ln := range a.listeners {
		go func() { errc <- a.srv.Serve(ln) }()
	}
	if gcHeadroomWanted() {
		stopGC := make(chan struct{})
		defer close(stopGC)
		go runGCHeadroom(stopGC)
	}
	a.startupReport()
	if a.gate.Config().Upstream.Mode != "exec" { // courier's imaplogin would log a probe as a session
		go a.probeUpstream()
	}
	a.ready.Store(true)
	notify("READY=1")
	if a.flags.demo {
		printDemo(os.Stdout, a.listeners[0].Addr().String())
	}
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case err := <-errc:
			if errors.Is(err, proxy.ErrServerClosed) {
				continue
			}
			a.logf("imapgate: listener failed: %v", err)
			a.srv.Close()
			a.close()
			return 1
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				a.reopenLogs()
				continue
			case syscall.SIGHUP:
				a.reopenLogs()
				a.reload()
				continue
			}
			a.ready.Store(false)
			notify("STOPPING=1")
			a.logf("imapgate: %s: shutting down; logged-in sessions may drain for %s", sig, a.flags.grace)
			ctx, cancel := context.WithTimeout(context.Background(), a.flags.grace)
			a.srv.Shutdown(ctx)
			cancel()
			a.close()
			return 0
		}
	}
}
