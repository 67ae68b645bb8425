package dns

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// captureWriter is a ResponseWriter that keeps what the handler wrote.
type captureWriter struct {
	remote net.Addr
	msgs   []*dns.Msg
}

func (w *captureWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(10, 9, 0, 1), Port: 53}
}
func (w *captureWriter) RemoteAddr() net.Addr        { return w.remote }
func (w *captureWriter) WriteMsg(m *dns.Msg) error   { w.msgs = append(w.msgs, m); return nil }
func (w *captureWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *captureWriter) Close() error                { return nil }
func (w *captureWriter) TsigStatus() error           { return nil }
func (w *captureWriter) TsigTimersOnly(bool)         {}
func (w *captureWriter) Hijack()                     {}

// FuzzServeDNS feeds the node resolver any message a container could send:
// it must answer exactly once (never panic) with a packable reply. With no
// upstream, nothing leaves the process.
func FuzzServeDNS(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"web.", dns.TypeA}, {"web.", dns.TypeAAAA}, {"5.0.9.10.in-addr.arpa.", dns.TypePTR}, {"example.org.", dns.TypeA}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		b, _ := m.Pack()
		f.Add(b, true)
	}
	r := New(Config{Upstreams: []string{}})
	gw := netip.MustParseAddr("10.9.0.1")
	n := Network{ID: "n", Gateway: gw, Subnet: netip.MustParsePrefix("10.9.0.0/24")}
	// A table without listeners: the handler is called directly.
	r.tab.Store(buildTable([]Network{n}, []Record{{NetworkID: "n", OwnerID: "a", InstanceID: "i", Names: []string{"web", "www"},
		IP: netip.MustParseAddr("10.9.0.5")}}, nil))
	k := listenKey{"", gw}
	f.Fuzz(func(t *testing.T, b []byte, known bool) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		from := net.IPv4(10, 9, 0, 5)
		if !known {
			from = net.IPv4(192, 0, 2, 1)
		}
		w := &captureWriter{remote: &net.UDPAddr{IP: from, Port: 5353}}
		r.serveDNS(k, w, req)
		if len(w.msgs) != 1 {
			t.Fatalf("%d replies", len(w.msgs))
		}
		if w.msgs[0].Id != req.Id {
			t.Fatalf("reply id %d to %d", w.msgs[0].Id, req.Id)
		}
		if _, err := w.msgs[0].Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
	})
}
