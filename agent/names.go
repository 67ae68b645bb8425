package agent

import (
	"context"
	"net/netip"
	"time"

	"flotilla/agent/dns"
	"flotilla/api/agentapi/wire"
)

// NameSource is implemented by control planes that serve the node
// resolver's table of names (Client does).
type NameSource interface {
	// Names returns the table, waiting up to wait while its revision is since.
	Names(ctx context.Context, since string, wait time.Duration) (wire.Names, error)
}

var _ NameSource = (*Client)(nil)

// namesLoop keeps the node's resolver in step with the control plane's table.
func (a *Agent) namesLoop(ctx context.Context, src NameSource) {
	rev := ""
	failures := 0
	for ctx.Err() == nil {
		t, err := src.Names(ctx, rev, a.cfg.PollWait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("polling the resolver's names failed", "err", err)
			failures++
			if !sleepCtx(ctx, jitter(a.cfg.BackoffBase, a.cfg.BackoffMax, failures)) {
				return
			}
			continue
		}
		failures = 0
		if t.CNS != nil {
			a.cfg.Resolver.SetCNS(t.CNS.Suffix, t.CNS.Address)
		}
		if t.Revision != rev {
			nets, recs := resolverTable(t, a.netnsOf)
			a.cfg.Resolver.Replace(nets, recs)
			rev = t.Revision
		}
	}
}

// resolverTable converts the wire table; malformed entries are skipped.
func resolverTable(t wire.Names, netnsOf func(networkID string, vni int) string) ([]dns.Network, []dns.Record) {
	nets := make([]dns.Network, 0, len(t.Networks))
	for _, n := range t.Networks {
		gw, err1 := netip.ParseAddr(n.Gateway)
		sub, err2 := netip.ParsePrefix(n.Subnet)
		if err1 != nil || err2 != nil {
			continue
		}
		nets = append(nets, dns.Network{ID: n.ID, Gateway: gw, Subnet: sub.Masked(), NetNS: netnsOf(n.ID, n.VNI)})
	}
	recs := make([]dns.Record, 0, len(t.Records))
	for _, r := range t.Records {
		ip, err := netip.ParseAddr(r.IP)
		if err != nil {
			continue
		}
		recs = append(recs, dns.Record{NetworkID: r.NetworkID, OwnerID: r.OwnerID, InstanceID: r.InstanceID, Names: r.Names, IP: ip})
	}
	return nets, recs
}

// putNames gives the resolver a poll's assignments' own names at once, so
// that a container just assigned is served before the control plane's
// table includes it.
func (a *Agent) putNames(as []wire.Assignment) {
	r := a.cfg.Resolver
	if r == nil {
		return
	}
	put := map[string]dns.Local{}
	var forget []string
	for _, x := range as {
		if x.DesiredState != wire.DesiredRunning {
			forget = append(forget, x.ID)
			continue
		}
		var l dns.Local
		for _, n := range x.Spec.NICs {
			gw, err1 := netip.ParseAddr(n.Gateway)
			sub, err2 := netip.ParsePrefix(n.Subnet)
			ip, err3 := netip.ParseAddr(n.IP)
			if err1 != nil || err2 != nil || err3 != nil {
				continue
			}
			l.Networks = append(l.Networks, dns.Network{ID: n.NetworkID, Gateway: gw, Subnet: sub.Masked(), NetNS: a.netnsOf(n.NetworkID, n.VNI)})
			l.Records = append(l.Records, dns.Record{NetworkID: n.NetworkID, OwnerID: x.Spec.OwnerID, InstanceID: x.ID,
				Names: []string{x.Spec.Name}, IP: ip})
		}
		if len(l.Networks) > 0 {
			put[x.ID] = l
		} else {
			// Disconnected from its last network: its old names go now,
			// not when they expire.
			forget = append(forget, x.ID)
		}
	}
	r.Update(put, forget)
}

// netnsOf is where a network's gateway lives on this node: a fabric
// VLAN's router namespace (RouterNetNS), else what GatewayNetNS says, else
// the host's ("").
func (a *Agent) netnsOf(networkID string, vni int) string {
	if vni != 0 && a.cfg.RouterNetNS != nil {
		return a.cfg.RouterNetNS(vni)
	}
	if a.cfg.GatewayNetNS == nil {
		return ""
	}
	return a.cfg.GatewayNetNS(networkID)
}
