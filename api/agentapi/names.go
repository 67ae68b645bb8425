package agentapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"time"

	"flotilla/api/agentapi/wire"
	"flotilla/api/httpx"
	"flotilla/store"
)

// namesKey is the one key node resolvers' long polls wait on.
const namesKey = "names"

// namesSettle lets a burst of changes (a batch of creates) land before a
// woken poll reads the table: every instance change wakes every node's
// poll, so this bounds each node to a few table reads a second. A node
// learns its own instances from its assignments at once; others' names
// reach it within this delay.
const namesSettle = 200 * time.Millisecond

// nodeNames answers the node's resolver table; with since equal to the
// current revision it waits (up to wait seconds) for a change.
func (s *Server) nodeNames(w http.ResponseWriter, r *http.Request) error {
	nodeID := nodeOf(r)
	since := r.URL.Query().Get("since")
	waitSec, err := queryInt(r, "wait", 30)
	if err != nil {
		return err
	}
	deadline := time.NewTimer(time.Duration(min(waitSec, 60)) * time.Second)
	defer deadline.Stop()
	for {
		woken, cancel := s.names.Wait(namesKey)
		list, err := s.store.NodeNames(r.Context(), nodeID)
		if err != nil {
			cancel()
			return err
		}
		out := namesTable(list)
		if out.Revision != since || waitSec == 0 {
			cancel()
			out.CNS = s.cnsFor(r)
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
			out.CNS = s.cnsFor(r)
			return httpx.WriteJSON(w, http.StatusOK, out)
		case <-r.Context().Done():
			cancel()
			return nil
		}
	}
}

// namesTable groups rows into the wire table and names its revision by
// its content.
func namesTable(list []store.NodeName) wire.Names {
	out := wire.Names{Networks: []wire.NameNetwork{}, Records: make([]wire.NameRecord, 0, len(list))}
	seen := map[string]bool{}
	for _, n := range list {
		if !seen[n.NetworkID] {
			seen[n.NetworkID] = true
			out.Networks = append(out.Networks, wire.NameNetwork{ID: n.NetworkID, Gateway: n.Gateway, Subnet: n.Subnet, VNI: n.VNI})
		}
		names := append([]string{n.Name}, n.Aliases...)
		out.Records = append(out.Records, wire.NameRecord{NetworkID: n.NetworkID, OwnerID: n.OwnerID,
			InstanceID: n.InstanceID, Names: names, IP: n.IP})
	}
	b, _ := json.Marshal(out)
	sum := sha256.Sum256(b)
	out.Revision = hex.EncodeToString(sum[:12])
	return out
}

// cnsFor returns the CNS server's address as this agent can reach it.
func (s *Server) cnsFor(r *http.Request) *wire.CNS {
	if s.CNS.Address == "" {
		return nil
	}
	c := s.CNS
	host, port, err := net.SplitHostPort(c.Address)
	if err != nil {
		return nil
	}
	if a, err := netip.ParseAddr(host); host == "" || err == nil && a.IsUnspecified() {
		reqHost, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			reqHost = r.Host
		}
		c.Address = net.JoinHostPort(reqHost, port)
	}
	return &c
}
