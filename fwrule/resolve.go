package fwrule

import (
	"net/netip"
	"sort"
)

// Member is an instance as rules see it: its id, addresses and tags.
type Member struct {
	ID   string
	IPs  []netip.Addr
	Tags map[string]any
}

// Entry is a rule resolved for one instance: the traffic it matches in one
// direction, with its peers (sources for inbound, destinations for
// outbound) reduced to addresses.
type Entry struct {
	Inbound  bool        `json:"inbound"`
	Action   Action      `json:"action"`
	Protocol string      `json:"protocol"`
	AllPorts bool        `json:"all_ports,omitempty"`
	Ports    []PortRange `json:"ports,omitempty"`
	ICMPType int         `json:"icmp_type,omitempty"`
	ICMPCode int         `json:"icmp_code,omitempty"` // -1: any code
	Priority int         `json:"priority,omitempty"`
	// AnyPeer matches every address; otherwise Peers lists them.
	AnyPeer bool           `json:"any_peer,omitempty"`
	Peers   []netip.Prefix `json:"peers,omitempty"`
}

// selects reports whether one of ts names m as an instance (all vms, vm,
// tag); address targets never select an instance.
func selects(ts []Target, m Member) bool {
	for _, t := range ts {
		if t.SelectsInstances() && t.Matches(m.ID, m.IPs, m.Tags) {
			return true
		}
	}
	return false
}

// AppliesTo reports whether the rule names m on either side.
func (r Rule) AppliesTo(m Member) bool { return selects(r.From, m) || selects(r.To, m) }

// Resolve returns what r means for self, given every instance of the same
// account (self included): an inbound entry when r's TO side names self,
// and an outbound entry when r's FROM side names self and r blocks
// (outbound traffic is allowed unless blocked, so an outbound ALLOW adds
// nothing).
func (r Rule) Resolve(self Member, account []Member) []Entry {
	var out []Entry
	base := Entry{Action: r.Action, Protocol: r.Protocol, AllPorts: r.AllPorts, Ports: r.Ports,
		ICMPType: r.ICMPType, ICMPCode: r.ICMPCode, Priority: r.Priority}
	if selects(r.To, self) {
		e := base
		e.Inbound = true
		e.AnyPeer, e.Peers = peers(r.From, account)
		if e.AnyPeer || len(e.Peers) > 0 {
			out = append(out, e)
		}
	}
	if r.Action == Block && selects(r.From, self) {
		e := base
		e.AnyPeer, e.Peers = peers(r.To, account)
		if e.AnyPeer || len(e.Peers) > 0 {
			out = append(out, e)
		}
	}
	return out
}

// peers reduces targets to addresses: any is every address, ip and subnet
// are themselves, instance selectors are the addresses of the account's
// instances they match.
func peers(ts []Target, account []Member) (bool, []netip.Prefix) {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, t := range ts {
		switch t.Kind {
		case KindAny:
			return true, nil
		case KindIP:
			a, err := netip.ParseAddr(t.Value)
			if err == nil {
				add(netip.PrefixFrom(a, a.BitLen()))
			}
		case KindSubnet:
			p, err := netip.ParsePrefix(t.Value)
			if err == nil {
				add(p.Masked())
			}
		default:
			for _, m := range account {
				if t.Matches(m.ID, m.IPs, m.Tags) {
					for _, a := range m.IPs {
						add(netip.PrefixFrom(a, a.BitLen()))
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return false, out
}

// SortEntries orders an instance's entries as they are enforced: higher
// priority first, then BLOCK before ALLOW; otherwise the order stays.
func SortEntries(es []Entry) {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Priority != es[j].Priority {
			return es[i].Priority > es[j].Priority
		}
		return es[i].Action == Block && es[j].Action != Block
	})
}
