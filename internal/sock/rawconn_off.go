//go:build linux && !imapgate_portable && imapgate_tcpconn

package sock

// rawConns is off with the tag imapgate_tcpconn: sockets carrying sessions
// are *net.TCPConns, everything else stays raw. For measuring Conn alone
// (cmd/imapbench -baseline).
const rawConns = false
