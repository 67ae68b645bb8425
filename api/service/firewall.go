package service

import (
	"net/netip"

	"flotilla/fwrule"
	"flotilla/store"
)

// PublishedPort is a port Docker publishes (-p 80, -p 53/udp).
type PublishedPort struct {
	Port     int    `json:"port"`
	Protocol string `json:"protocol"` // "tcp" or "udp"
}

// FirewallInstance is one instance's part of a node's firewall: the
// instance as rules see it, and the entries it enforces.
type FirewallInstance struct {
	Member  store.FirewallMember
	Entries []fwrule.Entry
}

// ResolveNodeFirewall resolves every rule of every account with an
// instance on nodeID for each such instance. An instance that publishes
// ports (Docker -p) also accepts them from any address, and everything from
// its own account's instances (as containers on a Docker network reach each
// other). Rules that no longer parse are skipped and passed to bad.
func ResolveNodeFirewall(nodeID string, in store.NodeFirewall, bad func(store.FirewallRule, error)) []FirewallInstance {
	rules := map[string][]fwrule.Rule{}
	for _, r := range in.Rules {
		p, err := fwrule.Parse(r.Rule)
		if err != nil {
			bad(r, err)
			continue
		}
		rules[r.OwnerID] = append(rules[r.OwnerID], p)
	}
	accounts := map[string][]fwrule.Member{}
	for _, m := range in.Members {
		accounts[m.OwnerID] = append(accounts[m.OwnerID], memberOfRow(m))
	}
	var out []FirewallInstance
	for _, m := range in.Members {
		if m.NodeID != nodeID {
			continue
		}
		fi := FirewallInstance{Member: m}
		if m.FirewallEnabled {
			self := memberOfRow(m)
			for _, r := range rules[m.OwnerID] {
				fi.Entries = append(fi.Entries, r.Resolve(self, accounts[m.OwnerID])...)
			}
			fi.Entries = append(fi.Entries, PublishedEntries(DecodeProcessSpec(m.Spec).Published, accounts[m.OwnerID])...)
			fwrule.SortEntries(fi.Entries)
		}
		out = append(out, fi)
	}
	return out
}

// PublishedEntries are the implicit rules of published ports: each port
// from any address, and when there are any, all traffic from the account's
// instances.
func PublishedEntries(ports []PublishedPort, account []fwrule.Member) []fwrule.Entry {
	if len(ports) == 0 {
		return nil
	}
	var out []fwrule.Entry
	for _, p := range ports {
		if p.Port < 1 || p.Port > 65535 || p.Protocol != "tcp" && p.Protocol != "udp" {
			continue
		}
		out = append(out, fwrule.Entry{Inbound: true, Action: fwrule.Allow, Protocol: p.Protocol, AnyPeer: true,
			Ports: []fwrule.PortRange{{Lo: p.Port, Hi: p.Port}}})
	}
	var peers []netip.Prefix
	for _, m := range account {
		for _, a := range m.IPs {
			peers = append(peers, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	if len(peers) > 0 {
		for _, proto := range []string{"tcp", "udp", "icmp"} {
			out = append(out, fwrule.Entry{Inbound: true, Action: fwrule.Allow, Protocol: proto, AllPorts: true, Peers: peers})
		}
	}
	return out
}

func memberOfRow(m store.FirewallMember) fwrule.Member {
	out := fwrule.Member{ID: m.ID, Tags: m.Tags}
	for _, s := range m.IPs {
		if a, err := netip.ParseAddr(s); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	return out
}
