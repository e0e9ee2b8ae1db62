package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"imapgate/courierlog"
	"imapgate/internal/sock"
)

// Exec starts courier's login program for each session, as
// couriertcpd would: `imaplogin /usr/bin/imapd Maildir` with the session on
// its stdin and stdout (one end of a socketpair) and the environment
// couriertcpd gives it (TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP,
// TCPLOCALPORT, IMAP_TLS=1 because imapgate did the TLS, and the variables
// of courier's configuration files). Courier's authentication, per-account
// options and its own log lines then see the real client. Courier's stderr
// lines go to imapgate's log with courierlogger's priority mapping, but
// for its LOGIN FAILED lines, which imapgate writes (isLoginFailed).
//
// imaplogin switches to each mailbox owner's uid after login, so serving
// several users needs root; NewExec refuses otherwise. MAXPERIP,
// MAXDAEMONS and the access file are couriertcpd's and are bypassed here:
// imapgate's limits apply instead.
type Exec struct {
	argv []string
	env  []string
	log  *courierlog.Logger
	// ulimitV and umask as courier's start script sets them
	// (IMAP_ULIMITD, IMAP_UMASK): applied through /bin/sh.
	ulimitV string
	umask   string
}

// NewExec checks that argv can run and returns the upstream. vars
// are courier's configuration variables (config.ShellVars).
func NewExec(argv []string, vars map[string]string, log *courierlog.Logger) (*Exec, error) {
	if len(argv) != 3 {
		return nil, fmt.Errorf("exec upstream: want [imaplogin, imapd, maildir], got %q", argv)
	}
	for _, p := range argv[:2] {
		if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("exec upstream: %s is not an executable program", p)
		}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("exec upstream needs root: imaplogin switches to each mailbox owner's uid after login and reaches authdaemond's socket (mode 0750 courier:courier); run imapgate as root or use a tcp upstream")
	}
	u := &Exec{argv: argv, log: log, ulimitV: vars["IMAP_ULIMITD"], umask: vars["IMAP_UMASK"]}
	for k, v := range vars {
		switch k {
		case "TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT", "IMAP_TLS", "IMAP_STARTTLS", "IMAP_TLS_REQUIRED":
			continue // set per session below
		}
		u.env = append(u.env, k+"="+v)
	}
	if !hasKey(vars, "PATH") {
		u.env = append(u.env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return u, nil
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// isLoginFailed reports whether a line imaplogin wrote to stderr is its
// "LOGIN FAILED, user=U, ip=[A], port=[P]" (or "method=M") line, after
// courierlogger's priority prefix ("INFO: "). imapgate writes that line
// itself, in the same words, when it sees the NO: so that a retry of the
// same credentials can be "LOGIN FAILED AGAIN", which fail2ban's
// courier-auth filter does not count (one stale phone must not get an
// office banned), and so that a failure that was not the credentials'
// (courier's authdaemon unreachable) is not one.
func isLoginFailed(line string) bool {
	_, text := courierlog.CourierPriority(line)
	return strings.HasPrefix(text, "LOGIN FAILED, ")
}

// fileConn is net.FileConn; tests make it fail (as EMFILE would).
var fileConn = net.FileConn

func (u *Exec) String() string { return "exec " + u.argv[0] }

// Dial implements Dialer.
func (u *Exec) Dial(ctx context.Context, c Client) (net.Conn, error) {
	// Each descriptor has exactly one owner: its *os.File, whose Close is
	// the only close. (Closing a number twice can close an unrelated
	// client's socket that a concurrent accept was just given the same
	// number.)
	ours, theirs, err := sock.Pair()
	if err != nil {
		return nil, fmt.Errorf("exec upstream: socketpair: %w", err)
	}
	defer theirs.Close()        // the child has its own copy once started
	conn, err := fileConn(ours) // dups: ours is closed either way
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("exec upstream: %w", err)
	}
	// ulimit -v and umask as /usr/lib/courier/imapd does, then exec.
	script := `[ -n "$1" ] && ulimit -v "$1"; [ -n "$2" ] && umask "$2"; shift 2; exec "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh", u.ulimitV, u.umask}, u.argv...)...)
	cmd.Stdin, cmd.Stdout = theirs, theirs
	cmd.Env = append(append([]string(nil), u.env...),
		"TCPREMOTEIP="+courierlog.Addr(c.Remote.Addr()),
		"TCPREMOTEPORT="+strconv.Itoa(int(c.Remote.Port())),
		"TCPLOCALIP="+courierlog.Addr(c.Local.Addr()),
		"TCPLOCALPORT="+strconv.Itoa(int(c.Local.Port())),
		"IMAP_TLS=1", "IMAP_STARTTLS=NO", "IMAP_TLS_REQUIRED=0",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("exec upstream: %w", err)
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("exec upstream: start %s: %w", u.argv[0], err)
	}
	go func() {
		// Courier's stderr lines, as courierlogger would pass them on.
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if line := sc.Text(); !isLoginFailed(line) {
				u.log.CourierLine(line)
			}
		}
		cmd.Wait() // reap it: it exits when the session's socket closes
	}()
	return conn, nil
}
