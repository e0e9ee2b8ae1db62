//go:build linux && !imapgate_portable && !imapgate_tcpconn

package sock

// rawConns: sockets carrying sessions are Conns (raw reads and writes).
const rawConns = true
