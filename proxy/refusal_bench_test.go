package proxy_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"imapgate/admin"
	"imapgate/certs"
	"imapgate/config"
	"imapgate/courierlog"
	"imapgate/gateway"
	"imapgate/proxy"
)

// BenchmarkDecideRefusal is imapgate's own code for one refused attempt
// of imapbench's flood: an address at max_per_ip (action close) connects
// again, through the gateway's limiter, metrics, top-sources tracker,
// escalation hook and throttled log line, without the sockets. Run:
// GOMAXPROCS=1 go test -run XXX -bench DecideRefusal -benchmem ./proxy/
func BenchmarkDecideRefusal(b *testing.B) {
	cfg := config.Default()
	cfg.Limits.MaxPerIP = 1
	cfg.Limits.MaxPreauthPerIP = 1
	cfg.Limits.Action = map[string]string{"max_per_ip": "close", "max_preauth_per_ip": "close"}
	cfg.Upstream.Address = "embedded"
	cert, err := certs.SelfSigned("localhost")
	if err != nil {
		b.Fatal(err)
	}
	log := courierlog.New(&courierlog.Memory{}, courierlog.Options{TLS: true})
	g, err := gateway.New(cfg, gateway.Options{Log: log, Certs: certs.NewStatic(cert),
		Instrument: func(g *gateway.Gate) (proxy.Events, proxy.Tracker) {
			m := admin.NewMetrics(prometheus.NewRegistry(), admin.Sources{Table: g.Table, Limiter: g.Limiter, Certs: g}, admin.NewTop(1024))
			return m, m
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	defer g.Server.Close()
	a := netip.MustParseAddr("127.0.0.9")
	held, d := g.Limiter.Admit(a, time.Now())
	if d.Refused {
		b.Fatal("the first connection was refused")
	}
	defer held.Release()
	remote := netip.AddrPortFrom(a, 40000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if g.Server.Decide(remote) {
			b.Fatal("an attempt over max_per_ip went on")
		}
	}
}
