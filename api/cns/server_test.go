package cns_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/miekg/dns"

	"flotilla/api/cns"
	"flotilla/api/service"
	"flotilla/store"
	"flotilla/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type env struct {
	t     *testing.T
	st    *store.Store
	addr  string
	node  store.Node
	image store.Image
	net   store.Network
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st := storetest.New(t)
	e := &env{t: t, st: st}
	var err error
	e.image, err = st.CreateImage(ctx, store.Image{Name: "base", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	must(t, err)
	e.net, err = st.CreateNetwork(ctx, store.Network{Name: "net", Subnet: "10.54.0.0/24"})
	must(t, err)
	e.node, err = st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Brands: []string{"joyent-minimal"}, MemoryMiB: 1 << 20,
		DiskMiB: 1 << 20, VCPUsMilli: 64000}, []byte("cred"))
	must(t, err)
	srv, err := cns.New(st, cns.Config{CNSZone: service.CNSZone{Suffix: "CNS.Test.", DC: "dc1"}, Refresh: 200 * time.Millisecond})
	must(t, err)
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-srv.Ready()
	a, err := srv.ListenAndServe(ctx, "127.0.0.1:0")
	must(t, err)
	e.addr = a.String()
	return e
}

func (e *env) account(login string) store.Account {
	a, err := e.st.CreateAccount(context.Background(), store.Account{Login: login, Email: login + "@x", TritonCNSEnabled: true})
	must(e.t, err)
	return a
}

func (e *env) create(owner store.Account, name string, tags map[string]any) store.Instance {
	e.t.Helper()
	in, _, err := e.st.CreateInstance(context.Background(), store.NewInstance{Instance: store.Instance{ID: uuid.NewString(),
		OwnerID: owner.ID, Name: name, Brand: "joyent-minimal", ImageID: e.image.ID, MemoryMiB: 64, DiskMiB: 64,
		DesiredState: "running", State: "provisioning", Tags: tags}, Networks: []string{e.net.ID}, Candidates: []string{e.node.ID}})
	must(e.t, err)
	return in
}

func (e *env) report(in store.Instance, state string) {
	e.t.Helper()
	must(e.t, e.st.ReportStatus(context.Background(), e.node.ID, in.ID, store.StatusReport{ObservedGeneration: 100, State: state}))
}

func (e *env) mutate(owner store.Account, in store.Instance, apply func(*store.Instance)) {
	e.t.Helper()
	_, err := e.st.UpdateInstance(context.Background(), owner.ID, in.ID, store.Mutation{Action: "update",
		Apply: func(i *store.Instance) error { apply(i); return nil }})
	must(e.t, err)
}

// query asks the server over UDP (or TCP) with a real client.
func (e *env) query(proto, name string, qtype uint16) *dns.Msg {
	e.t.Helper()
	c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	resp, _, err := c.Exchange(m, e.addr)
	must(e.t, err)
	return resp
}

func render(m *dns.Msg) string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.SRV:
			out = append(out, fmt.Sprintf("%d %s", rr.Port, rr.Target))
		}
	}
	slices.Sort(out)
	return dns.RcodeToString[m.Rcode] + " " + strings.Join(out, ",")
}

// eventually waits until the answer for name renders as want.
func (e *env) eventually(name string, qtype uint16, want string) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := render(e.query("udp", name, qtype))
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s %s = %q, want %q", name, dns.TypeToString[qtype], got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCNS(t *testing.T) {
	e := newEnv(t)
	alice, bob := e.account("alice"), e.account("bob")
	web := e.create(alice, "web", map[string]any{service.TagCNSServices: "web:8080,api"})
	ip := web.NICs[0].IP
	const zone = ".dc1.cns.test"

	t.Run("ErrNotRunningYet", func(t *testing.T) {
		e.eventually("web.inst.alice"+zone, dns.TypeA, "NXDOMAIN ")
	})
	e.report(web, "running")
	t.Run("InstanceNames", func(t *testing.T) {
		e.eventually("web.inst.alice"+zone, dns.TypeA, "NOERROR "+ip)
		for _, name := range []string{"WEB.inst.ALICE" + zone, web.ID + ".inst.alice" + zone, "web.inst." + alice.ID + zone} {
			if got := render(e.query("tcp", name, dns.TypeA)); got != "NOERROR "+ip {
				t.Errorf("%s = %q", name, got)
			}
		}
	})
	t.Run("ServiceNames", func(t *testing.T) {
		e.eventually("api.svc.alice"+zone, dns.TypeA, "NOERROR "+ip)
		e.eventually("web.svc.alice"+zone, dns.TypeSRV, "NOERROR 8080 "+web.ID+".inst.alice"+zone+".")
		web2 := e.create(alice, "web2", map[string]any{service.TagCNSServices: "web"})
		e.report(web2, "running")
		e.eventually("web.svc.alice"+zone, dns.TypeA, "NOERROR "+strings.Join(sorted(ip, web2.NICs[0].IP), ","))
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		other := e.create(bob, "web", nil)
		e.report(other, "running")
		e.eventually("web.inst.bob"+zone, dns.TypeA, "NOERROR "+other.NICs[0].IP)
		if got := render(e.query("udp", "web.inst.alice"+zone, dns.TypeA)); got != "NOERROR "+ip {
			t.Fatalf("alice's web after bob made one = %q", got)
		}
	})
	t.Run("Rename", func(t *testing.T) {
		e.mutate(alice, web, func(i *store.Instance) { i.Name = "www" })
		e.eventually("www.inst.alice"+zone, dns.TypeA, "NOERROR "+ip)
		e.eventually("web.inst.alice"+zone, dns.TypeA, "NXDOMAIN ")
	})
	t.Run("Disable", func(t *testing.T) {
		e.mutate(alice, web, func(i *store.Instance) { i.Tags[service.TagCNSDisable] = "true" })
		e.eventually("www.inst.alice"+zone, dns.TypeA, "NXDOMAIN ")
		e.eventually("api.svc.alice"+zone, dns.TypeA, "NXDOMAIN ")
		e.mutate(alice, web, func(i *store.Instance) { delete(i.Tags, service.TagCNSDisable) })
		e.eventually("www.inst.alice"+zone, dns.TypeA, "NOERROR "+ip)
	})
	t.Run("Stop", func(t *testing.T) {
		e.report(web, "stopped")
		e.eventually("www.inst.alice"+zone, dns.TypeA, "NXDOMAIN ")
		e.report(web, "running")
		e.eventually("www.inst.alice"+zone, dns.TypeA, "NOERROR "+ip)
	})
	t.Run("Delete", func(t *testing.T) {
		_, err := e.st.DeleteInstance(context.Background(), alice.ID, web.ID, nil)
		must(t, err)
		e.report(web, "deleted")
		e.eventually("www.inst.alice"+zone, dns.TypeA, "NXDOMAIN ")
		e.eventually("api.svc.alice"+zone, dns.TypeA, "NXDOMAIN ")
	})
	t.Run("AccountSwitch", func(t *testing.T) {
		// An account publishes nothing until it turns triton_cns_enabled on.
		dave, err := e.st.CreateAccount(context.Background(), store.Account{Login: "dave", Email: "d@x"})
		must(t, err)
		db := e.create(dave, "db", nil)
		e.report(db, "running")
		on, off := true, false
		time.Sleep(300 * time.Millisecond) // a refresh has read the instance
		e.eventually("db.inst.dave"+zone, dns.TypeA, "NXDOMAIN ")
		_, err = e.st.UpdateAccount(context.Background(), dave.ID, store.AccountUpdate{TritonCNSEnabled: &on})
		must(t, err)
		e.eventually("db.inst.dave"+zone, dns.TypeA, "NOERROR "+db.NICs[0].IP)
		_, err = e.st.UpdateAccount(context.Background(), dave.ID, store.AccountUpdate{TritonCNSEnabled: &off})
		must(t, err)
		e.eventually("db.inst.dave"+zone, dns.TypeA, "NXDOMAIN ")
	})
	t.Run("Zone", func(t *testing.T) {
		if m := e.query("udp", "example.org", dns.TypeA); m.Rcode != dns.RcodeRefused {
			t.Errorf("outside the zone: %s, want REFUSED", dns.RcodeToString[m.Rcode])
		}
		m := e.query("udp", "cns.test", dns.TypeSOA)
		if len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeSOA || !m.Authoritative {
			t.Errorf("SOA of the apex: %v", m)
		}
		if m := e.query("udp", "nothing.inst.alice"+zone, dns.TypeA); m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
			t.Errorf("unknown name: %s with %d authority records, want NXDOMAIN with the SOA", dns.RcodeToString[m.Rcode], len(m.Ns))
		}
	})
}

// TestCNSLoadsAtStart checks that a server started after instances exist
// answers for them (the start-up read, not the change feed).
func TestCNSLoadsAtStart(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	acct, err := st.CreateAccount(ctx, store.Account{Login: "carol", Email: "c@x", TritonCNSEnabled: true})
	must(t, err)
	im, err := st.CreateImage(ctx, store.Image{Name: "base", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	must(t, err)
	nw, err := st.CreateNetwork(ctx, store.Network{Name: "net", Subnet: "10.55.0.0/24"})
	must(t, err)
	node, err := st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Brands: []string{"joyent-minimal"}, MemoryMiB: 4096,
		DiskMiB: 1 << 20, VCPUsMilli: 8000}, []byte("c"))
	must(t, err)
	in, _, err := st.CreateInstance(ctx, store.NewInstance{Instance: store.Instance{ID: uuid.NewString(), OwnerID: acct.ID,
		Name: "db", Brand: "joyent-minimal", ImageID: im.ID, MemoryMiB: 64, DiskMiB: 64, DesiredState: "running", State: "running"},
		Networks: []string{nw.ID}, Candidates: []string{node.ID}})
	must(t, err)
	must(t, st.ReportStatus(ctx, node.ID, in.ID, store.StatusReport{ObservedGeneration: 1, State: "running"}))
	srv, err := cns.New(st, cns.Config{CNSZone: service.CNSZone{DC: "dc1"}})
	must(t, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(rctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Ready()
	a, err := srv.ListenAndServe(rctx, "127.0.0.1:0")
	must(t, err)
	m := new(dns.Msg)
	m.SetQuestion("db.inst.carol.dc1."+service.DefaultCNSSuffix+".", dns.TypeA)
	resp, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, a.String())
	must(t, err)
	if got := render(resp); got != "NOERROR "+in.NICs[0].IP {
		t.Fatalf("db at start = %q", got)
	}
}

func TestNewErrBadConfig(t *testing.T) {
	for name, cfg := range map[string]cns.Config{
		"ErrBadSuffix": {CNSZone: service.CNSZone{Suffix: "a..b", DC: "dc1"}},
		"ErrBadDC":     {CNSZone: service.CNSZone{Suffix: "cns.test", DC: "dc 1"}},
		"ErrNoDC":      {CNSZone: service.CNSZone{Suffix: "cns.test"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := cns.New(nil, cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }
