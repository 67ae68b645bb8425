package cns

import (
	"testing"

	"github.com/miekg/dns"

	"flotilla/api/service"
	"flotilla/store"
)

// FuzzAnswer feeds the CNS server any message a client could send: it
// must answer (never panic) with a packable reply that echoes the id.
func FuzzAnswer(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"web.inst.alice.dc1.cns.test.", dns.TypeA}, {"web.svc.alice.dc1.cns.test.", dns.TypeSRV}, {"cns.test.", dns.TypeSOA}, {"example.org.", dns.TypeA}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		b, _ := m.Pack()
		f.Add(b)
	}
	s, err := New(nil, Config{CNSZone: service.CNSZone{Suffix: "cns.test", DC: "dc1"}})
	if err != nil {
		f.Fatal(err)
	}
	s.put(store.CNSInstance{ID: "0b0b0b0b-0000-4000-8000-000000000001", OwnerID: "0a0a0a0a-0000-4000-8000-000000000002", Login: "alice",
		Name: "web", State: "running", Tags: map[string]any{service.TagCNSServices: "web:80"}, IPs: []string{"10.0.0.5", "fd00::5"}, CNSEnabled: true})
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		resp := s.answer(req)
		if resp.Id != req.Id || !resp.Response {
			t.Fatalf("reply id %d response %v to id %d", resp.Id, resp.Response, req.Id)
		}
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v\n%v", err, resp)
		}
	})
}
