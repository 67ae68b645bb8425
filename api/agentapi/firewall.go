package agentapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"time"

	"flotilla/api/agentapi/wire"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/store"
)

// fwKey is the one key node firewalls' long polls wait on.
const fwKey = "firewall"

// nodeFirewall answers the node's firewall; with since equal to the current
// revision it waits (up to wait seconds) for a change.
func (s *Server) nodeFirewall(w http.ResponseWriter, r *http.Request) error {
	nodeID := nodeOf(r)
	since := r.URL.Query().Get("since")
	waitSec, err := queryInt(r, "wait", 30)
	if err != nil {
		return err
	}
	deadline := time.NewTimer(time.Duration(min(waitSec, 60)) * time.Second)
	defer deadline.Stop()
	for {
		woken, cancel := s.fw.Wait(fwKey)
		in, err := s.store.NodeFirewall(r.Context(), nodeID)
		if err != nil {
			cancel()
			return err
		}
		out := s.firewallTable(nodeID, in)
		if out.Revision != since || waitSec == 0 {
			cancel()
			return httpx.WriteJSON(w, http.StatusOK, out)
		}
		select {
		case <-woken:
			select {
			case <-time.After(namesSettle):
			case <-r.Context().Done():
				return nil
			}
		case <-deadline.C:
			cancel()
			return httpx.WriteJSON(w, http.StatusOK, out)
		case <-r.Context().Done():
			cancel()
			return nil
		}
	}
}

// firewallTable resolves the node's firewall and names its revision by its
// content.
func (s *Server) firewallTable(nodeID string, in store.NodeFirewall) wire.Firewall {
	list := service.ResolveNodeFirewall(nodeID, in, func(r store.FirewallRule, err error) {
		s.log.Warn("stored firewall rule does not parse; skipped", "rule", r.ID, "account", r.OwnerID, "err", err)
	})
	out := wire.Firewall{Instances: make([]wire.FirewallInstance, 0, len(list))}
	for _, fi := range list {
		m := fi.Member
		x := wire.FirewallInstance{ID: m.ID, Enabled: m.FirewallEnabled, Entries: fi.Entries, NICs: []wire.FirewallNIC{}}
		for i := range m.IPs {
			n := wire.FirewallNIC{Index: i, IP: m.IPs[i]}
			if i < len(m.MACs) {
				n.MAC = m.MACs[i]
			}
			if i < len(m.Primaries) {
				n.Primary = m.Primaries[i]
			}
			x.NICs = append(x.NICs, n)
		}
		out.Instances = append(out.Instances, x)
	}
	b, _ := json.Marshal(out)
	sum := sha256.Sum256(b)
	out.Revision = hex.EncodeToString(sum[:12])
	return out
}
