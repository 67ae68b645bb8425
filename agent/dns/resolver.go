// Package dns is a compute node's resolver. Containers get their network's
// gateway as their nameserver; the resolver listens there (UDP and TCP) and
// answers the names of the instances on the same network of the same
// account — an instance's name and its Docker network aliases, as Docker's
// embedded DNS does on user networks — and never another account's. Every
// other query is forwarded: names under the CNS suffix to the control
// plane's CNS server, the rest to the host's nameservers, each with a short
// timeout; without a reachable upstream the answer is a prompt SERVFAIL.
//
// Each agent feeds it (Feed) the control plane's table of names (Replace)
// and, so that a container that has just been assigned can resolve at once,
// the records of its own assignments (Put, Forget).
//
// Imports: standard library, github.com/miekg/dns, vishvananda/netns and
// golang.org/x/sys/unix only. Never store, api or the agent loop.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Config configures a Resolver.
type Config struct {
	// Upstreams are "host:port" nameservers for names the resolver does not
	// own. Nil means the nameservers of the host's /etc/resolv.conf.
	Upstreams []string
	// Timeout bounds one exchange with an upstream (default 1s).
	Timeout time.Duration
	// Port is where the resolver listens on each gateway (default 53).
	Port int
	// TTL of the answers it owns (default 10s: names follow instances).
	TTL    uint32
	Logger *slog.Logger
}

// LocalTTL is how long records from the node's own assignments are kept
// beside the control plane's table, which includes them once it has seen
// the instance.
const LocalTTL = 30 * time.Second

// Resolver serves names on the gateways of the node's networks.
type Resolver struct {
	cfg Config
	log *slog.Logger
	tab atomic.Pointer[table]
	fwd atomic.Pointer[forwarding]

	mu        sync.Mutex
	tables    map[string]fed // the control plane's tables, by feed
	locals    map[string]local
	listeners map[listenKey]*listener
	pinned    map[listenKey]bool // served by Serve, kept whatever the table says
	cnsSuffix string
	cnsAddr   string
	closed    bool
}

type listener struct {
	udp, tcp *dns.Server
}

// New returns a resolver that serves nothing until it is given networks.
func New(cfg Config) *Resolver {
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Port == 0 {
		cfg.Port = 53
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Upstreams == nil {
		cfg.Upstreams = HostNameservers("/etc/resolv.conf")
	}
	r := &Resolver{cfg: cfg, log: cfg.Logger, locals: map[string]local{}, listeners: map[listenKey]*listener{}, pinned: map[listenKey]bool{},
		tables: map[string]fed{}}
	r.tab.Store(buildTable(nil, nil, nil))
	r.storeForwarding()
	return r
}

// HostNameservers returns the nameservers of a resolv.conf file as
// host:port, or none when it cannot be read.
func HostNameservers(path string) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return []string{}
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}

// SetCNS forwards names under suffix to the CNS server at addr (host:port).
// An empty suffix or address forwards them like any other name.
func (r *Resolver) SetCNS(suffix, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cnsSuffix == canonical(suffix) && r.cnsAddr == addr {
		return
	}
	r.cnsSuffix, r.cnsAddr = canonical(suffix), addr
	r.storeForwarding()
}

// forwarding is a snapshot of where queries go, read without the lock.
type forwarding struct {
	cnsSuffix, cnsAddr string
	upstreams          []string
}

// storeForwarding snapshots the forwarding settings. r.mu is held.
func (r *Resolver) storeForwarding() {
	f := &forwarding{cnsSuffix: r.cnsSuffix, cnsAddr: r.cnsAddr}
	for _, u := range r.cfg.Upstreams {
		if ap, err := netip.ParseAddrPort(u); err == nil && int(ap.Port()) == r.cfg.Port {
			if _, self := r.listeners[listenKey{"", ap.Addr().Unmap()}]; self {
				continue // never forward to itself
			}
		}
		f.upstreams = append(f.upstreams, u)
	}
	r.fwd.Store(f)
}

// fed is one feed's table.
type fed struct {
	nets []Network
	recs []Record
}

// Feed is one agent's view of a resolver. Several agents in one process
// (flotilla dev) share the host's gateways, hence one resolver: each feeds
// its own node's table and the resolver answers from all of them.
type Feed struct {
	r    *Resolver
	name string
}

// Feed returns the feed called name (one per node).
func (r *Resolver) Feed(name string) *Feed { return &Feed{r: r, name: name} }

// Replace installs the control plane's table of the node's networks and
// their records, and listens on exactly the gateways the resolver's tables
// (and the nodes' recent assignments) need.
func (f *Feed) Replace(nets []Network, recs []Record) {
	r := f.r
	r.change(func() {
		r.tables[f.name] = fed{nets: nets, recs: recs}
		for id, l := range r.locals {
			if time.Since(l.at) > LocalTTL {
				delete(r.locals, id)
			}
		}
	})
}

// Local is what a node knows of one of its own instances from its
// assignment: its networks and its records on them.
type Local struct {
	Networks []Network
	Records  []Record
}

// Put adds the records of one of the node's own instances (from its
// assignment) until the control plane's table has caught up.
func (f *Feed) Put(instanceID string, nets []Network, recs []Record) {
	f.Update(map[string]Local{instanceID: {Networks: nets, Records: recs}}, nil)
}

// Forget drops what Put added for an instance.
func (f *Feed) Forget(instanceID string) { f.Update(nil, []string{instanceID}) }

// Update puts and forgets several instances at once (one poll's
// assignments), rebuilding the table once.
func (f *Feed) Update(put map[string]Local, forget []string) {
	if len(put) == 0 && len(forget) == 0 {
		return
	}
	r := f.r
	now := time.Now()
	r.change(func() {
		for _, id := range forget {
			delete(r.locals, id)
		}
		for id, l := range put {
			r.locals[id] = local{nets: l.Networks, recs: l.Records, at: now}
		}
	})
}

// SetCNS is the resolver's SetCNS.
func (f *Feed) SetCNS(suffix, addr string) { f.r.SetCNS(suffix, addr) }

// change applies edit, makes a new table and reconciles the listeners with
// it. Listeners are shut down after the lock is released: a shutdown waits
// for queries in flight.
func (r *Resolver) change(edit func()) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	edit()
	var nets []Network
	var recs []Record
	for _, f := range r.tables {
		nets = append(nets, f.nets...)
		recs = append(recs, f.recs...)
	}
	t := buildTable(nets, recs, r.locals)
	r.tab.Store(t)
	for k := range t.networks {
		if _, ok := r.listeners[k]; ok {
			continue
		}
		l, err := r.listen(k)
		if err != nil {
			// Retried at the next change; the containers' queries fail
			// until then, and the log says why.
			r.log.Warn("the node resolver cannot listen on a gateway", "address", k.ip, "netns", k.netns, "err", err)
			continue
		}
		r.listeners[k] = l
	}
	var stop []*listener
	for k, l := range r.listeners {
		if _, ok := t.networks[k]; !ok && !r.pinned[k] {
			stop = append(stop, l)
			delete(r.listeners, k)
		}
	}
	r.storeForwarding()
	r.mu.Unlock()
	for _, l := range stop {
		l.shutdown()
	}
}

// Serve listens on ip (UDP and TCP, the configured port) inside the network
// namespace at netnsPath ("" for the host's). The address need not exist
// yet: the sockets are bound with IP_FREEBIND, so a gateway can be served
// before its bridge is up. Serving an address already served is a no-op.
// Clients are answered only from networks whose gateway is ip; the
// listener stays until Close.
func (r *Resolver) Serve(netnsPath string, ip netip.Addr) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("resolver closed")
	}
	k := listenKey{netnsPath, ip.Unmap()}
	r.pinned[k] = true
	if _, ok := r.listeners[k]; ok {
		return nil
	}
	l, err := r.listen(k)
	if err != nil {
		delete(r.pinned, k)
		return err
	}
	r.listeners[k] = l
	r.storeForwarding()
	return nil
}

// Listening returns the addresses the resolver listens on.
func (r *Resolver) Listening() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(r.listeners))
	for k := range r.listeners {
		out = append(out, netip.AddrPortFrom(k.ip, uint16(r.cfg.Port)))
	}
	return out
}

// Close stops every listener.
func (r *Resolver) Close() {
	r.mu.Lock()
	r.closed = true
	ls := r.listeners
	r.listeners = map[listenKey]*listener{}
	r.mu.Unlock()
	for _, l := range ls {
		l.shutdown()
	}
}

func (l *listener) shutdown() {
	l.udp.Shutdown()
	l.tcp.Shutdown()
}

func (r *Resolver) listen(k listenKey) (*listener, error) {
	addr := netip.AddrPortFrom(k.ip, uint16(r.cfg.Port)).String()
	lc := net.ListenConfig{Control: freebind}
	var pc net.PacketConn
	var ln net.Listener
	err := inNetNS(k.netns, func() error {
		var err error
		if pc, err = lc.ListenPacket(context.Background(), "udp", addr); err != nil {
			return err
		}
		if ln, err = lc.Listen(context.Background(), "tcp", addr); err != nil {
			pc.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	h := r.handler(k)
	l := &listener{udp: &dns.Server{PacketConn: pc, Handler: h}, tcp: &dns.Server{Listener: ln, Handler: h}}
	started := make(chan struct{}, 2)
	l.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	l.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go l.udp.ActivateAndServe()
	go l.tcp.ActivateAndServe()
	<-started
	<-started
	r.log.Info("node resolver listening", "address", addr, "netns", k.netns)
	return l, nil
}

// freebind lets a socket bind an address that is not (yet) on any
// interface, and a TCP listener bind again while old connections linger.
// UDP sockets get no SO_REUSEADDR: a second resolver on the same address
// must fail, not steal the first one's queries.
func freebind(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
		}
		if serr == nil && strings.HasPrefix(network, "tcp") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// inNetNS runs fn on a thread inside the network namespace at path (the
// host's when path is empty). Sockets made there stay in that namespace.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine, so no other
		// goroutine ever runs in the wrong namespace.
		return fmt.Errorf("return from network namespace %s: %w", path, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

func (r *Resolver) handler(k listenKey) dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		r.serveDNS(k, w, req)
	})
}

func remoteAddr(a net.Addr) (netip.Addr, bool) {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	default:
		return netip.Addr{}, false
	}
	addr, ok := netip.AddrFromSlice(ip)
	return addr.Unmap(), ok
}

func (r *Resolver) serveDNS(k listenKey, w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		m.Rcode = dns.RcodeNotImplemented
		if len(req.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
		}
		w.WriteMsg(m)
		return
	}
	src, ok := remoteAddr(w.RemoteAddr())
	t := r.tab.Load()
	if !ok || !t.served(k, src) {
		// Only the networks behind this gateway may use it: no open resolver.
		m.Rcode = dns.RcodeRefused
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := canonical(q.Name)
	if sc, known := t.clients[k][src]; known && q.Qclass == dns.ClassINET {
		if r.answerOwn(t, sc, q, name, m) {
			w.WriteMsg(m)
			return
		}
	}
	r.forward(w, req, name)
}

// answerOwn answers from the client's scope; false means the name is not
// one the resolver owns.
func (r *Resolver) answerOwn(t *table, sc scope, q dns.Question, name string, m *dns.Msg) bool {
	if q.Qtype == dns.TypePTR {
		ip, ok := reverseAddr(name)
		if !ok {
			return false
		}
		target, ok := t.ptrs[sc][ip]
		if !ok {
			return false
		}
		m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: r.cfg.TTL},
			Ptr: dns.Fqdn(target)})
		return true
	}
	addrs, ok := t.names[sc][name]
	if !ok {
		return false
	}
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: r.cfg.TTL}
		switch {
		case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	// A name it owns with no record of the asked type is NOERROR, empty:
	// an AAAA lookup of an IPv4-only container must not go upstream.
	return true
}

// reverseAddr parses an in-addr.arpa or ip6.arpa name.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, l := range labels {
			n, err := strconv.ParseUint(l, 10, 8)
			if err != nil || (len(l) > 1 && l[0] == '0') {
				return netip.Addr{}, false
			}
			b[3-i] = byte(n)
		}
		return netip.AddrFrom4(b), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa"); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, l := range labels {
			if len(l) != 1 {
				return netip.Addr{}, false
			}
			n, err := strconv.ParseUint(l, 16, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= byte(n) << 4
			} else {
				b[pos/2] |= byte(n)
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// upstreams returns where a name goes: the CNS server for its suffix, the
// host's nameservers otherwise.
func (r *Resolver) upstreams(name string) []string {
	f := r.fwd.Load()
	if f.cnsSuffix != "" && f.cnsAddr != "" && (name == f.cnsSuffix || strings.HasSuffix(name, "."+f.cnsSuffix)) {
		return []string{f.cnsAddr}
	}
	return f.upstreams
}

// forward relays a query upstream over the transport it came in on and
// relays the answer; SERVFAIL when no upstream answers in time.
func (r *Resolver) forward(w dns.ResponseWriter, req *dns.Msg, name string) {
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	c := &dns.Client{Net: proto, Timeout: r.cfg.Timeout}
	for _, u := range r.upstreams(name) {
		resp, _, err := c.Exchange(req, u)
		if err != nil {
			r.log.Debug("upstream nameserver failed", "upstream", u, "name", name, "err", err)
			continue
		}
		resp.Id = req.Id
		w.WriteMsg(resp)
		return
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	m.RecursionAvailable = true
	w.WriteMsg(m)
}
