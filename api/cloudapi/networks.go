package cloudapi

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/store"
)

func (s *Server) networkRoutes(r chi.Router) {
	getHead(r, "/networks", s.handle(s.listNetworks))
	getHead(r, "/networks/{id}", s.handle(s.getNetwork))
	getHead(r, "/networks/{id}/ips", s.handle(s.listNetworkIPs))
	getHead(r, "/networks/{id}/ips/{ip}", s.handle(s.getNetworkIP))
	r.Put("/networks/{id}/ips/{ip}", s.handle(s.updateNetworkIP))
}

func networkJSON(n store.Network) map[string]any {
	m := map[string]any{"id": n.ID, "name": n.Name, "public": n.Public}
	if n.Description != "" {
		m["description"] = n.Description
	}
	if n.Fabric {
		m["fabric"] = true
		m["vlan_id"] = n.VLANID
		m["internet_nat"] = n.InternetNAT
		m["resolvers"] = n.Resolvers
		m["routes"] = n.Routes
	}
	// Our networks always have a known subnet; show it as fabric networks do.
	m["subnet"] = n.Subnet
	m["provision_start_ip"] = n.ProvisionStart
	m["provision_end_ip"] = n.ProvisionEnd
	if n.Gateway != nil {
		m["gateway"] = *n.Gateway
	}
	return m
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	nets, err := s.store.ListNetworks(r.Context(), caller(r).AccountID)
	if err != nil {
		return err
	}
	fabricOnly := r.URL.Query().Get("fabric") == "true"
	out := []any{}
	for _, n := range nets {
		if fabricOnly && !n.Fabric {
			continue
		}
		out = append(out, networkJSON(n))
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getNetwork(w http.ResponseWriter, r *http.Request) error {
	id := pathParam(r, "id")
	if !isUUID(id) {
		return errdefs.NotFoundf("network %s not found", id)
	}
	n, err := s.store.GetNetwork(r.Context(), caller(r).AccountID, id)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, networkJSON(n))
}

func (s *Server) listNetworkIPs(w http.ResponseWriter, r *http.Request) error {
	id := pathParam(r, "id")
	if !isUUID(id) {
		return errdefs.NotFoundf("network %s not found", id)
	}
	n, err := s.store.GetNetwork(r.Context(), caller(r).AccountID, id)
	if err != nil {
		return err
	}
	limit, offset, err := paging(r)
	if err != nil {
		return err
	}
	ips, err := s.store.ListNetworkIPs(r.Context(), caller(r).AccountID, id, limit, offset)
	if err != nil {
		return err
	}
	out := []any{}
	for _, ip := range ips {
		out = append(out, networkIPJSON(n, ip))
	}
	w.Header().Set("x-query-limit", strconv.Itoa(limit))
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

// networkIPJSON is one address of n; managed marks the one the network
// itself uses (its gateway).
func networkIPJSON(n store.Network, ip store.NetworkIP) map[string]any {
	m := map[string]any{"ip": ip.IP, "reserved": ip.Reserved, "managed": n.Gateway != nil && *n.Gateway == ip.IP}
	if ip.OwnerID != nil {
		m["owner_uuid"] = *ip.OwnerID
	}
	if ip.InstanceID != nil {
		m["belongs_to_uuid"] = *ip.InstanceID
	}
	return m
}

// ipNetwork is the network of an /networks/{id}/ips/{ip} path.
func (s *Server) ipNetwork(r *http.Request) (store.Network, error) {
	id := pathParam(r, "id")
	if !isUUID(id) {
		return store.Network{}, errdefs.NotFoundf("network %s not found", id)
	}
	return s.store.GetNetwork(r.Context(), caller(r).AccountID, id)
}

func (s *Server) getNetworkIP(w http.ResponseWriter, r *http.Request) error {
	n, err := s.ipNetwork(r)
	if err != nil {
		return err
	}
	ip, err := s.store.GetNetworkIP(r.Context(), caller(r).AccountID, n, pathParam(r, "ip"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, networkIPJSON(n, ip))
}

// updateNetworkIP reserves or releases a free address of one of the
// caller's own networks (triton network ip update NET IP reserved=true).
func (s *Server) updateNetworkIP(w http.ResponseWriter, r *http.Request) error {
	n, err := s.ipNetwork(r)
	if err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	v, ok := p["reserved"]
	if !ok {
		return &errdefs.Error{Code: errdefs.Invalid, Message: "reserved is a required argument", Reason: "MissingParameter"}
	}
	reserved, err := boolParam(v)
	if err != nil {
		return errdefs.InvalidArgument("reserved must be a boolean")
	}
	ip, err := s.store.SetNetworkIPReserved(r.Context(), caller(r).AccountID, n, pathParam(r, "ip"), reserved)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, networkIPJSON(n, ip))
}

// paging reads limit (default and max 1000) and offset.
func paging(r *http.Request) (int, int, error) {
	limit, offset := 1000, 0
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return 0, 0, errdefs.InvalidArgument("limit must be a number between 1 and 1000")
		}
		limit = n
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, 0, errdefs.InvalidArgument("offset must be a non-negative number")
		}
		offset = n
	}
	return limit, offset, nil
}
