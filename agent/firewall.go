package agent

import (
	"context"
	"net"
	"net/netip"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/firewall"
	"flotilla/api/agentapi/wire"
)

// FirewallSource is a control plane that serves the node's firewall.
type FirewallSource interface {
	// Firewall returns the node's firewall, waiting up to wait while its
	// revision is since.
	Firewall(ctx context.Context, since string, wait time.Duration) (wire.Firewall, error)
}

var _ FirewallSource = (*Client)(nil)

// firewallLoop keeps the node's firewall in step with the control plane:
// every change of rules, tags, addresses or instances produces a new
// revision, which is applied as a whole.
func (a *Agent) firewallLoop(ctx context.Context, src FirewallSource, names driver.HostInterfacer) {
	rev := ""
	failures := 0
	for ctx.Err() == nil {
		t, err := src.Firewall(ctx, rev, a.cfg.PollWait)
		if err == nil && t.Revision != rev {
			if err = a.cfg.Firewall.Apply(firewallInstances(t, names)); err == nil {
				rev = t.Revision
				a.log.Debug("firewall applied", "revision", rev, "instances", len(t.Instances))
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("updating the node firewall failed", "err", err)
			failures++
			if !sleepCtx(ctx, jitter(a.cfg.BackoffBase, a.cfg.BackoffMax, failures)) {
				return
			}
			continue
		}
		failures = 0
	}
}

// firewallInstances converts the wire firewall, naming each NIC's host
// interfaces; malformed NICs are skipped.
func firewallInstances(t wire.Firewall, names driver.HostInterfacer) []firewall.Instance {
	out := make([]firewall.Instance, 0, len(t.Instances))
	for _, x := range t.Instances {
		refs := make([]driver.NICRef, len(x.NICs))
		for i, n := range x.NICs {
			refs[i] = driver.NICRef{MAC: n.MAC, Primary: n.Primary}
		}
		ifaces := names.HostInterfaces(x.ID, refs)
		in := firewall.Instance{ID: x.ID, Enabled: x.Enabled, Entries: x.Entries}
		for i, n := range x.NICs {
			mac, err1 := net.ParseMAC(n.MAC)
			ip, err2 := netip.ParseAddr(n.IP)
			if err1 != nil || err2 != nil || len(mac) != 6 || !ip.Unmap().Is4() || i >= len(ifaces) || len(ifaces[i]) == 0 {
				continue
			}
			in.NICs = append(in.NICs, firewall.NIC{Ifaces: ifaces[i], MAC: mac, IP: ip.Unmap()})
		}
		out = append(out, in)
	}
	return out
}
