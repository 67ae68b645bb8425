package dns

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Network is a network this node serves names on: the resolver listens on
// its gateway address (inside NetNS, or in the host namespace when NetNS is
// empty) and answers clients from its subnet.
type Network struct {
	ID      string
	Gateway netip.Addr
	Subnet  netip.Prefix
	NetNS   string
}

// Record is one instance's address on one network, with the names it
// answers to there (its name, Docker network aliases).
type Record struct {
	NetworkID  string
	OwnerID    string
	InstanceID string
	Names      []string
	IP         netip.Addr
}

// listenKey identifies one listening address.
type listenKey struct {
	netns string
	ip    netip.Addr
}

// scope is what one client may see: the names of its own account on the
// network it asked through.
type scope struct {
	network string
	owner   string
}

// table is an immutable snapshot of everything the resolver answers from;
// a change builds a new one.
type table struct {
	networks map[listenKey][]Network            // by listening address
	clients  map[listenKey]map[netip.Addr]scope // client address -> scope, per listening address
	names    map[scope]map[string][]netip.Addr
	ptrs     map[scope]map[netip.Addr]string
}

// local is what the agent learnt from its own assignments, kept until the
// control plane's table has had time to include it.
type local struct {
	nets []Network
	recs []Record
	at   time.Time
}

func buildTable(nets []Network, recs []Record, locals map[string]local) *table {
	t := &table{networks: map[listenKey][]Network{}, clients: map[listenKey]map[netip.Addr]scope{},
		names: map[scope]map[string][]netip.Addr{}, ptrs: map[scope]map[netip.Addr]string{}}
	byID := map[string]Network{}
	addNet := func(n Network) {
		if !n.Gateway.IsValid() || !n.Subnet.IsValid() {
			return
		}
		if _, ok := byID[n.ID]; ok {
			return
		}
		byID[n.ID] = n
		k := listenKey{n.NetNS, n.Gateway}
		t.networks[k] = append(t.networks[k], n)
	}
	addRec := func(r Record) {
		n, ok := byID[r.NetworkID]
		if !ok || !r.IP.IsValid() {
			return
		}
		k := listenKey{n.NetNS, n.Gateway}
		if t.clients[k] == nil {
			t.clients[k] = map[netip.Addr]scope{}
		}
		sc := scope{r.NetworkID, r.OwnerID}
		t.clients[k][r.IP] = sc
		if t.names[sc] == nil {
			t.names[sc] = map[string][]netip.Addr{}
			t.ptrs[sc] = map[netip.Addr]string{}
		}
		// The same instance may come from the control plane's table and
		// from the node's assignment (under a newer name): it answers to
		// the names of both.
		for i, name := range r.Names {
			name = canonical(name)
			if name == "" || slices.Contains(t.names[sc][name], r.IP) {
				continue
			}
			t.names[sc][name] = append(t.names[sc][name], r.IP)
			if _, ok := t.ptrs[sc][r.IP]; !ok && i == 0 {
				t.ptrs[sc][r.IP] = name
			}
		}
	}
	// Local records first: they are what the node runs right now.
	for _, l := range locals {
		for _, n := range l.nets {
			addNet(n)
		}
	}
	for _, n := range nets {
		addNet(n)
	}
	for _, l := range locals {
		for _, r := range l.recs {
			addRec(r)
		}
	}
	for _, r := range recs {
		addRec(r)
	}
	return t
}

// canonical lower-cases a name and drops a trailing dot.
func canonical(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

// served reports whether src is on one of the networks served at k.
func (t *table) served(k listenKey, src netip.Addr) bool {
	for _, n := range t.networks[k] {
		if n.Subnet.Contains(src) {
			return true
		}
	}
	return false
}
