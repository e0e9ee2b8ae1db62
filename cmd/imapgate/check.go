package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"imapgate/certs"
	"imapgate/cluster"
	"imapgate/config"
	"imapgate/gateway"
	"imapgate/kernel"
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
	nftablesOn := false
	if cfg.Kernel.NFTables {
		if perr := kernel.Probe(); perr != nil {
			fmt.Fprintf(os.Stderr, "imapgate: warning: [kernel] nftables = true, but nftables cannot be used: %v; imapgate would go on with the userspace limits only\n", perr)
		} else {
			if kernel.TableHeld(cfg.Kernel.Table) != nil {
				fmt.Fprintf(os.Stdout, "imapgate: kernel: nftables usable, but table inet %s is held by a running imapgate: this configuration's, if it runs; "+
					"another instance started with it would go on with the userspace limits only (give each its own kernel.table)\n", cfg.Kernel.Table)
			} else {
				fmt.Fprintf(os.Stdout, "imapgate: kernel: nftables usable (table inet %s)\n", cfg.Kernel.Table)
			}
			nftablesOn = true
		}
	}
	checkConntrack(os.Stdout, "/", nftablesOn)
	if cerr := checkCluster(os.Stdout, os.Stderr, cfg.Cluster); err == nil {
		err = cerr
	}
	return err
}

// checkCluster asks Redis what a node would (cluster.Probe) and prints
// what it found on one line. Redis unreachable is a warning (a node
// starts on local limits and recovers); refused credentials, missing
// rights and the like are errors.
func checkCluster(w, ew io.Writer, c config.Cluster) error {
	if c.Redis == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	rep, err := cluster.Probe(ctx, gateway.ClusterOptions(c))
	var pe *cluster.ProbeError
	switch {
	case errors.As(err, &pe) && pe.Kind == cluster.ProbeUnreachable:
		fmt.Fprintln(ew, "imapgate: warning: cluster.redis:", err)
		return nil
	case err != nil:
		return fmt.Errorf("cluster.redis: %w", err)
	}
	fmt.Fprintln(w, "imapgate: cluster:", rep)
	if rep.Slow() {
		fmt.Fprintf(ew, "imapgate: warning: cluster: Redis's round trip is longer than cluster.timeout (%s): "+
			"a node's calls would be late and it would run on local limits\n", rep.Timeout)
	}
	return nil
}

// checkConntrack prints the host's conntrack table, and the warning a
// running imapgate would log for its fill (nftablesOn: with its nftables
// path running).
func checkConntrack(w io.Writer, root string, nftablesOn bool) {
	c, ok := kernel.ReadConntrack(root)
	if !ok {
		fmt.Fprintln(w, "imapgate: host conntrack: not loaded (nothing to watch)")
		return
	}
	fmt.Fprintf(w, "imapgate: host conntrack: %s\n", c)
	for i := len(kernel.ConntrackLevels) - 1; i >= 0; i-- {
		if l := kernel.ConntrackLevels[i]; c.Percent() >= l {
			fmt.Fprintln(w, "imapgate:", kernel.ConntrackWarning(c, l, nftablesOn))
			break
		}
	}
}

// printSettings prints every effective setting and where it came from;
// secrets show "(set)".
func printSettings(w io.Writer, cfg *config.Config) {
	for _, s := range cfg.Settings() {
		fmt.Fprintf(w, "  %-36s = %-28s (%s)\n", s.Key, s.Value, s.Origin)
	}
}
