package cloudapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/store"
)

// fabricRoutes are the account's fabric VLANs and their networks
// (/fabrics/default/vlans...) and adding and removing NICs of machines.
func (s *Server) fabricRoutes(r chi.Router) {
	const vlans = "/fabrics/default/vlans"
	getHead(r, vlans, s.handle(s.listVLANs))
	r.Post(vlans, s.handle(s.createVLAN))
	getHead(r, vlans+"/{vlan_id}", s.handle(s.getVLAN))
	// CloudAPI mounts PUT; triton 7.17 sends POST.
	r.Put(vlans+"/{vlan_id}", s.handle(s.updateVLAN))
	r.Post(vlans+"/{vlan_id}", s.handle(s.updateVLAN))
	r.Delete(vlans+"/{vlan_id}", s.handle(s.deleteVLAN))
	getHead(r, vlans+"/{vlan_id}/networks", s.handle(s.listFabricNetworks))
	r.Post(vlans+"/{vlan_id}/networks", s.handle(s.createFabricNetwork))
	getHead(r, vlans+"/{vlan_id}/networks/{id}", s.handle(s.getFabricNetwork))
	r.Delete(vlans+"/{vlan_id}/networks/{id}", s.handle(s.deleteFabricNetwork))
	r.Post("/machines/{id}/nics", s.handle(s.addNic))
	r.Delete("/machines/{id}/nics/{mac}", s.handle(s.removeNic))
}

func vlanJSON(v store.FabricVLAN) map[string]any {
	m := map[string]any{"vlan_id": v.VLANID, "name": v.Name}
	if v.Description != "" {
		m["description"] = v.Description
	}
	return m
}

// vlanParam is the {vlan_id} path parameter; one that is not a VLAN id names
// no VLAN.
func vlanParam(r *http.Request) (int, error) {
	s := pathParam(r, "vlan_id")
	id, err := strconv.Atoi(s)
	if err != nil || id < 0 || id > 4095 {
		return 0, errdefs.NotFoundf("VLAN %s not found", s)
	}
	return id, nil
}

// intParam reads a JSON integer or a decimal string.
func intParam(p map[string]any, k string) (int, bool, error) {
	v, ok := p[k]
	if !ok || v == nil {
		return 0, false, nil
	}
	switch x := v.(type) {
	case json.Number:
		if n, err := strconv.Atoi(x.String()); err == nil {
			return n, true, nil
		}
	case string:
		if n, err := strconv.Atoi(x); err == nil {
			return n, true, nil
		}
	}
	return 0, false, errdefs.InvalidArgument("%s must be an integer", k)
}

func (s *Server) listVLANs(w http.ResponseWriter, r *http.Request) error {
	list, err := s.store.ListFabricVLANs(r.Context(), caller(r).AccountID)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(list))
	for _, v := range list {
		out = append(out, vlanJSON(v))
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) createVLAN(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	id, ok, err := intParam(p, "vlan_id")
	if err != nil {
		return err
	}
	if !ok {
		return &errdefs.Error{Code: errdefs.Invalid, Message: "vlan_id is a required argument", Reason: "MissingParameter"}
	}
	name, err := stringParam(p, "name")
	if err != nil {
		return err
	}
	if name == "" {
		return &errdefs.Error{Code: errdefs.Invalid, Message: "name is a required argument", Reason: "MissingParameter"}
	}
	desc, err := stringParam(p, "description")
	if err != nil {
		return err
	}
	v, err := s.store.CreateFabricVLAN(r.Context(), store.FabricVLAN{OwnerID: caller(r).AccountID, VLANID: id, Name: name, Description: desc})
	if err != nil {
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("/%s/fabrics/default/vlans/%d", caller(r).Login, v.VLANID))
	return writeJSON(w, r, http.StatusCreated, vlanJSON(v))
}

func (s *Server) getVLAN(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	v, err := s.store.GetFabricVLAN(r.Context(), caller(r).AccountID, id)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, vlanJSON(v))
}

func (s *Server) updateVLAN(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	var name, desc *string
	for k, dst := range map[string]**string{"name": &name, "description": &desc} {
		if _, ok := p[k]; ok {
			v, err := stringParam(p, k)
			if err != nil {
				return err
			}
			*dst = &v
		}
	}
	v, err := s.store.UpdateFabricVLAN(r.Context(), caller(r).AccountID, id, name, desc)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusAccepted, vlanJSON(v))
}

func (s *Server) deleteVLAN(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	if err := s.store.DeleteFabricVLAN(r.Context(), caller(r).AccountID, id); err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			return &errdefs.Error{Code: errdefs.Conflict, Message: errdefs.MessageOf(err), Reason: "InUseError"}
		}
		return err
	}
	return noContent(w, http.StatusNoContent)
}

// vlanNetworks returns the caller's networks on VLAN id (NotFound when
// the VLAN does not exist).
func (s *Server) vlanNetworks(r *http.Request, id int) ([]store.Network, error) {
	c := caller(r)
	if _, err := s.store.GetFabricVLAN(r.Context(), c.AccountID, id); err != nil {
		return nil, err
	}
	all, err := s.store.ListNetworks(r.Context(), c.AccountID)
	if err != nil {
		return nil, err
	}
	var out []store.Network
	for _, n := range all {
		if n.OwnerID != nil && n.Fabric && n.VLANID == id {
			out = append(out, n)
		}
	}
	return out, nil
}

func (s *Server) listFabricNetworks(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	nets, err := s.vlanNetworks(r, id)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(nets))
	for _, n := range nets {
		out = append(out, networkJSON(n))
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getFabricNetwork(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	nets, err := s.vlanNetworks(r, id)
	if err != nil {
		return err
	}
	for _, n := range nets {
		if n.ID == pathParam(r, "id") {
			return writeJSON(w, r, http.StatusOK, networkJSON(n))
		}
	}
	return errdefs.NotFoundf("network %s not found", pathParam(r, "id"))
}

func (s *Server) createFabricNetwork(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	n := store.Network{InternetNAT: true, Resolvers: []string{}, Routes: map[string]any{}}
	for _, f := range []struct {
		key      string
		dst      *string
		required bool
	}{
		{"name", &n.Name, true}, {"subnet", &n.Subnet, true}, {"provision_start_ip", &n.ProvisionStart, true},
		{"provision_end_ip", &n.ProvisionEnd, true}, {"description", &n.Description, false},
	} {
		v, err := stringParam(p, f.key)
		if err != nil {
			return err
		}
		if v == "" && f.required {
			return &errdefs.Error{Code: errdefs.Invalid, Message: f.key + " is a required argument", Reason: "MissingParameter"}
		}
		*f.dst = v
	}
	for _, k := range []string{"provision_start_ip", "provision_end_ip"} {
		if _, err := netip.ParseAddr(map[string]string{"provision_start_ip": n.ProvisionStart, "provision_end_ip": n.ProvisionEnd}[k]); err != nil {
			return errdefs.InvalidArgument("%s must be an IPv4 address inside the subnet", k)
		}
	}
	if _, err := store.ParseSubnet(n.Subnet, true); err != nil {
		return err
	}
	gw, err := stringParam(p, "gateway")
	if err != nil {
		return err
	}
	if gw != "" {
		n.Gateway = &gw
	}
	if v, ok := p["internet_nat"]; ok {
		b, err := boolParam(v)
		if err != nil {
			return errdefs.InvalidArgument("internet_nat must be a boolean")
		}
		n.InternetNAT = b
	}
	if v, ok := p["resolvers"]; ok && v != nil {
		list, ok := v.([]any)
		if !ok {
			return errdefs.InvalidArgument("resolvers must be an array of IPv4 addresses")
		}
		for _, x := range list {
			str, _ := x.(string)
			if a, err := netip.ParseAddr(str); err != nil || !a.Is4() {
				return errdefs.InvalidArgument("resolver %v is not an IPv4 address", x)
			}
			n.Resolvers = append(n.Resolvers, str)
		}
	}
	if v, ok := p["routes"]; ok && v != nil {
		m, ok := v.(map[string]any)
		if !ok {
			return errdefs.InvalidArgument("routes must be an object of subnet: gateway")
		}
		for dst, via := range m {
			str, _ := via.(string)
			if _, err := netip.ParsePrefix(dst); err != nil {
				if _, err := netip.ParseAddr(dst); err != nil {
					return errdefs.InvalidArgument("route destination %q is not an IPv4 subnet or address", dst)
				}
			}
			if _, err := netip.ParseAddr(str); err != nil {
				return errdefs.InvalidArgument("route gateway %v for %s is not an IPv4 address", via, dst)
			}
		}
		n.Routes = m
	}
	created, err := s.store.CreateFabricNetwork(r.Context(), caller(r).AccountID, id, n)
	if err != nil {
		if errdefs.Is(err, errdefs.Conflict) && strings.Contains(errdefs.MessageOf(err), "already exists") {
			return &errdefs.Error{Code: errdefs.Conflict, Message: errdefs.MessageOf(err), Reason: "InvalidArgument"}
		}
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("/%s/fabrics/default/vlans/%d/networks/%s", caller(r).Login, id, created.ID))
	return writeJSON(w, r, http.StatusCreated, networkJSON(created))
}

func (s *Server) deleteFabricNetwork(w http.ResponseWriter, r *http.Request) error {
	id, err := vlanParam(r)
	if err != nil {
		return err
	}
	nets, err := s.vlanNetworks(r, id)
	if err != nil {
		return err
	}
	for _, n := range nets {
		if n.ID != pathParam(r, "id") {
			continue
		}
		if err := s.store.DeleteNetwork(r.Context(), caller(r).AccountID, n.ID); err != nil {
			if errdefs.Is(err, errdefs.Conflict) {
				return &errdefs.Error{Code: errdefs.Conflict, Message: "network " + n.ID + " is in use: delete its instances' NICs first", Reason: "InUseError"}
			}
			return err
		}
		return noContent(w, http.StatusNoContent)
	}
	return errdefs.NotFoundf("network %s not found", pathParam(r, "id"))
}

// addNic: network is a network uuid or name, or CloudAPI's network object
// {"ipv4_uuid": ...}.
func (s *Server) addNic(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	var ref string
	switch v := p["network"].(type) {
	case string:
		ref = v
	case map[string]any:
		ref, _ = v["ipv4_uuid"].(string)
		if ips, ok := v["ipv4_ips"]; ok && ips != nil {
			return errdefs.InvalidArgument("choosing NIC addresses (ipv4_ips) is not supported: leave it out and an address is allocated")
		}
	case nil:
	default:
		return errdefs.InvalidArgument("network must be a network id or {\"ipv4_uuid\": id}")
	}
	if ref == "" {
		return &errdefs.Error{Code: errdefs.Invalid, Message: "network is a required argument", Reason: "MissingParameter"}
	}
	if _, ok := p["primary"]; ok {
		if b, err := boolParam(p["primary"]); err != nil || b {
			return errdefs.InvalidArgument("adding a primary NIC is not supported: the instance keeps its primary NIC")
		}
	}
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	c := caller(r)
	nic, created, err := s.svc.AddNIC(r.Context(), c, pathParam(r, "id"), ref)
	if err != nil {
		return err
	}
	loc := fmt.Sprintf("/%s/machines/%s/nics/%s", c.Login, pathParam(r, "id"), strings.ReplaceAll(nic.MAC, ":", ""))
	w.Header().Set("Location", loc)
	if !created {
		return noContent(w, http.StatusFound)
	}
	in, err := s.store.GetInstance(r.Context(), c.AccountID, pathParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusCreated, nicJSON(nic, in))
}

func (s *Server) removeNic(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if err := s.svc.RemoveNIC(r.Context(), caller(r), pathParam(r, "id"), pathParam(r, "mac")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}
