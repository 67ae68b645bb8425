// Package cns is the control plane's Triton CNS server: authoritative DNS
// for a suffix, answering <instance>.inst.<account>.<dc>.<suffix> (by name
// or uuid, account by login or uuid) and <service>.svc.<account>.<dc>.<suffix>
// for instances tagged triton.cns.services (A/AAAA of running instances,
// SRV where the tag gives a port), for the accounts that turned
// triton_cns_enabled on. Instances tagged triton.cns.disable are left out.
//
// It answers from memory: one read of the live instances at start, then
// the change feed (woken by the database's notifications), reading only the
// instances that changed (or an account's, when its triton_cns_enabled
// changes). No query costs SQL.
//
// Imports: store, api/service (the naming rules), github.com/miekg/dns.
// Never api/cloudapi or api/dockerapi.
package cns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"flotilla/api/service"
	"flotilla/store"
)

// Config configures a Server.
type Config struct {
	service.CNSZone
	// TTL of answers (default 30s, Triton CNS's).
	TTL uint32
	// Refresh is how often the change feed is read when no notification
	// arrives (default 2s).
	Refresh time.Duration
	Logger  *slog.Logger
}

// Server is the CNS server.
type Server struct {
	st   *store.Store
	cfg  Config
	log  *slog.Logger
	apex string // suffix as a lower-case FQDN

	mu     sync.RWMutex
	insts  map[string]entry           // by instance id
	names  map[string]map[string]bool // lower-case FQDN -> instance ids
	owners map[string]map[string]bool // account id -> its published instance ids
	ready  chan struct{}
}

// entry is what the server keeps of one instance.
type entry struct {
	owner   string
	running bool
	ips     []netip.Addr
	names   []string // FQDNs it answers to (instance and service names)
	svcs    map[string]service.CNSService
	target  string // the uuid instance name, SRV target
}

// New returns a server for st; Run fills it.
func New(st *store.Store, cfg Config) (*Server, error) {
	if cfg.Suffix == "" {
		cfg.Suffix = service.DefaultCNSSuffix
	}
	cfg.Suffix = strings.TrimSuffix(strings.ToLower(cfg.Suffix), ".")
	if _, ok := dns.IsDomainName(cfg.Suffix); !ok || strings.Contains(cfg.Suffix, "..") {
		return nil, fmt.Errorf("CNS suffix %q is not a domain name (like cns.example.com)", cfg.Suffix)
	}
	if !service.ValidDNSLabel(cfg.DC) {
		return nil, fmt.Errorf("CNS datacenter name %q is not a DNS label (letters, digits and '-')", cfg.DC)
	}
	if cfg.TTL == 0 {
		cfg.TTL = 30
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{st: st, cfg: cfg, log: cfg.Logger, apex: dns.Fqdn(cfg.Suffix),
		insts: map[string]entry{}, names: map[string]map[string]bool{}, owners: map[string]map[string]bool{},
		ready: make(chan struct{})}, nil
}

// Run loads the live instances and then follows the change feed until ctx
// ends. It returns an error only when the first load fails.
func (s *Server) Run(ctx context.Context) error {
	seq, err := s.st.LastChangeSeq(ctx)
	if err != nil {
		return err
	}
	all, err := s.st.CNSInstances(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	for _, in := range all {
		s.put(in)
	}
	s.mu.Unlock()
	close(s.ready)
	s.log.Info("CNS server loaded", "instances", len(all), "suffix", s.cfg.Suffix)

	wake := make(chan struct{}, 1)
	poke := func(string) {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	// State changes and deletes announce themselves on flotilla_object;
	// creates, renames and tag changes on flotilla_node.
	for _, ch := range []string{"flotilla_object", "flotilla_node"} {
		wg.Go(func() { s.st.Listen(lctx, ch, func() { poke("") }, poke) })
	}
	defer wg.Wait()
	// Instance changes, and account changes (triton_cns_enabled).
	cur := store.NewChangeCursor(seq, "", "")
	tick := time.NewTicker(s.cfg.Refresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-tick.C:
		}
		if err := s.follow(ctx, cur); err != nil && ctx.Err() == nil {
			s.log.Warn("CNS server could not read the change feed", "err", err)
		}
	}
}

// follow applies the changes after the cursor.
func (s *Server) follow(ctx context.Context, cur *store.ChangeCursor) error {
	changes, err := cur.Next(ctx, s.st)
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		return nil
	}
	var ids, owners []string
	seen := map[string]bool{}
	for _, c := range changes {
		if seen[c.Kind+c.ObjectID] {
			continue
		}
		seen[c.Kind+c.ObjectID] = true
		switch c.Kind {
		case "instance":
			ids = append(ids, c.ObjectID)
		case "account":
			owners = append(owners, c.ObjectID)
		}
	}
	var list []store.CNSInstance
	if len(ids) > 0 {
		var err error
		if list, err = s.st.CNSInstancesByID(ctx, ids); err != nil {
			return err
		}
	}
	for _, o := range owners {
		more, err := s.st.CNSInstancesByOwner(ctx, o)
		if err != nil {
			return err
		}
		list = append(list, more...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range owners {
		for id := range s.owners[o] {
			s.remove(id)
		}
	}
	for _, id := range ids {
		s.remove(id)
	}
	for _, in := range list {
		s.remove(in.ID)
		if in.State != "deleted" {
			s.put(in)
		}
	}
	return nil
}

// Ready is closed once the first load is done.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// put indexes an instance. s.mu is held.
func (s *Server) put(in store.CNSInstance) {
	if !in.CNSEnabled {
		return // the account has not turned CNS on
	}
	z := s.cfg.CNSZone
	e := entry{owner: in.OwnerID, running: in.State == "running", svcs: z.ServiceNames(in.Login, in.OwnerID, in.Tags)}
	for _, ip := range in.IPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			e.ips = append(e.ips, a.Unmap())
		}
	}
	inst := z.InstanceNames(in.Login, in.OwnerID, in.ID, in.Name, in.Tags)
	for _, n := range inst {
		if strings.HasPrefix(n, strings.ToLower(in.ID)+".inst.") && e.target == "" {
			e.target = dns.Fqdn(n)
		}
		e.names = append(e.names, dns.Fqdn(n))
	}
	for n := range e.svcs {
		e.names = append(e.names, dns.Fqdn(n))
	}
	if len(e.names) == 0 {
		return
	}
	s.insts[in.ID] = e
	if s.owners[e.owner] == nil {
		s.owners[e.owner] = map[string]bool{}
	}
	s.owners[e.owner][in.ID] = true
	for _, n := range e.names {
		if s.names[n] == nil {
			s.names[n] = map[string]bool{}
		}
		s.names[n][in.ID] = true
	}
}

// remove drops an instance from the index. s.mu is held.
func (s *Server) remove(id string) {
	e, ok := s.insts[id]
	if !ok {
		return
	}
	delete(s.insts, id)
	delete(s.owners[e.owner], id)
	if len(s.owners[e.owner]) == 0 {
		delete(s.owners, e.owner)
	}
	for _, n := range e.names {
		delete(s.names[n], id)
		if len(s.names[n]) == 0 {
			delete(s.names, n)
		}
	}
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	w.WriteMsg(s.answer(req))
}

func (s *Server) answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if req.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		return m
	}
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(dns.Fqdn(q.Name))
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m
	}
	if name != s.apex && !strings.HasSuffix(name, "."+s.apex) {
		// Not our zone: an authoritative server does not recurse.
		m.Authoritative = false
		m.Rcode = dns.RcodeRefused
		return m
	}
	if name == s.apex {
		switch q.Qtype {
		case dns.TypeSOA, dns.TypeANY:
			m.Answer = append(m.Answer, s.soa())
		case dns.TypeNS:
			m.Answer = append(m.Answer, s.ns())
		default:
			m.Ns = append(m.Ns, s.soa())
		}
		return m
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := s.names[name]
	var live []string
	for id := range ids {
		if s.insts[id].running {
			live = append(live, id)
		}
	}
	if len(live) == 0 {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
		return m
	}
	slices.Sort(live)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: s.cfg.TTL}
	}
	for _, id := range live {
		e := s.insts[id]
		for _, ip := range e.ips {
			switch {
			case ip.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip.AsSlice()})
			case ip.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip.AsSlice()})
			}
		}
		if q.Qtype == dns.TypeSRV || q.Qtype == dns.TypeANY {
			if svc, ok := e.svcs[strings.TrimSuffix(name, ".")]; ok && svc.Port != 0 && e.target != "" {
				m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(dns.TypeSRV), Priority: 0, Weight: 10, Port: uint16(svc.Port), Target: e.target})
			}
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.soa())
	}
	return m
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: s.apex, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.cfg.TTL},
		Ns: "ns." + s.apex, Mbox: "hostmaster." + s.apex, Serial: uint32(time.Now().Unix()), Refresh: 3600, Retry: 600,
		Expire: 86400, Minttl: s.cfg.TTL}
}

func (s *Server) ns() dns.RR {
	return &dns.NS{Hdr: dns.RR_Header{Name: s.apex, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: s.cfg.TTL}, Ns: "ns." + s.apex}
}

// ListenAndServe serves UDP and TCP on addr until ctx ends. It returns once
// both listeners are up (or one failed), with the UDP address bound.
func (s *Server) ListenAndServe(ctx context.Context, addr string) (net.Addr, error) {
	pc, ln, err := listenPair(addr)
	if err != nil {
		return nil, err
	}
	servers := []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}}
	started := make(chan struct{}, len(servers))
	for _, srv := range servers {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() {
			if err := srv.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				s.log.Error("CNS server stopped", "err", err)
			}
		}()
	}
	for range servers {
		<-started
	}
	go func() {
		<-ctx.Done()
		for _, srv := range servers {
			srv.Shutdown()
		}
	}()
	return pc.LocalAddr(), nil
}

// listenPair binds UDP and TCP on the same port. When addr asks for port 0
// the kernel picks the UDP port, and another process may already hold that
// port for TCP: then it tries again with a fresh port, a few times.
func listenPair(addr string) (net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 20
	}
	var err error
	for range tries {
		pc, perr := net.ListenPacket("udp", addr)
		if perr != nil {
			return nil, nil, fmt.Errorf("CNS server: listen on udp %s: %w", addr, perr)
		}
		ln, lerr := net.Listen("tcp", pc.LocalAddr().String())
		if lerr == nil {
			return pc, ln, nil
		}
		pc.Close()
		err = fmt.Errorf("CNS server: listen on tcp %s: %w", pc.LocalAddr(), lerr)
	}
	return nil, nil, err
}
