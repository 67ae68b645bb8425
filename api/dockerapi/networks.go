package dockerapi

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) networkRoutes(r chi.Router) {
	r.Get("/networks", s.handle(s.listNetworks))
	r.Get("/networks/{id}", s.handle(s.inspectNetwork))
	r.Post("/networks/create", s.handle(s.createNetwork))
	r.Delete("/networks/{id}", s.handle(s.deleteNetwork))
	r.Post("/networks/{id}/connect", s.handle(s.connectNetwork))
	r.Post("/networks/{id}/disconnect", s.handle(s.disconnectNetwork))
}

// NetworkID is a network's 64-hex Docker id: its uuid's hex digits twice
// (as sdc-docker did), so that the uuid can be read back from it.
func NetworkID(uuid string) string {
	h := strings.ReplaceAll(uuid, "-", "")
	return h + h
}

// resolveNetwork finds a network the caller may use by name, uuid, Docker
// id or unique Docker id prefix. Errors: NotFound "network x not found".
func (s *Server) resolveNetwork(ctx context.Context, c service.Caller, ref string) (store.Network, error) {
	list, err := s.store.ListNetworks(ctx, c.AccountID)
	if err != nil {
		return store.Network{}, err
	}
	for _, n := range list {
		if n.ID == ref || NetworkID(n.ID) == ref {
			return n, nil
		}
	}
	var byName []store.Network
	for _, n := range list {
		if n.Name == ref {
			byName = append(byName, n)
		}
	}
	if len(byName) > 0 {
		// The account's own network wins over a shared one of the same name.
		for _, n := range byName {
			if n.OwnerID != nil {
				return n, nil
			}
		}
		return byName[0], nil
	}
	var found []store.Network
	if isLowerHex(ref) {
		for _, n := range list {
			if strings.HasPrefix(NetworkID(n.ID), ref) {
				found = append(found, n)
			}
		}
	}
	if len(found) == 1 {
		return found[0], nil
	}
	if len(found) > 1 {
		return store.Network{}, errdefs.InvalidArgument("network %s is ambiguous (%d matches)", ref, len(found))
	}
	return store.Network{}, errdefs.NotFoundf("network %s not found", ref)
}

// networkOf renders a network; containers (for inspect) are the caller's
// containers with an address on it.
func networkOf(n store.Network, containers []store.Instance) network.Inspect {
	driver := "flotilla"
	scope := "global"
	opts := map[string]string{"flotilla.public": fmt.Sprint(n.Public), "flotilla.bridge": n.Bridge}
	cfg := network.IPAMConfig{Subnet: n.Subnet, IPRange: ""}
	labels := n.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	if n.Gateway != nil {
		cfg.Gateway = *n.Gateway
	}
	out := network.Inspect{
		Name: n.Name, ID: NetworkID(n.ID), Created: n.CreatedAt, Scope: scope, Driver: driver,
		IPAM:     network.IPAM{Driver: "default", Options: map[string]string{}, Config: []network.IPAMConfig{cfg}},
		Internal: !n.InternetNAT, Attachable: true, Options: opts, Labels: labels,
		Containers: map[string]network.EndpointResource{}, Peers: nil,
	}
	for _, in := range containers {
		for _, nic := range in.NICs {
			if nic.NetworkID != n.ID {
				continue
			}
			ip := nic.IP
			if p, err := netip.ParsePrefix(n.Subnet); err == nil {
				ip = fmt.Sprintf("%s/%d", nic.IP, p.Bits())
			}
			out.Containers[ContainerID(in.ID)] = network.EndpointResource{Name: in.Name,
				EndpointID: endpointID(in.ID, nic.MAC), MacAddress: nic.MAC, IPv4Address: ip}
		}
	}
	return out
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	args, err := parseFilters(r.URL.Query().Get("filters"), "driver", "id", "label", "name", "scope", "type", "dangling")
	if err != nil {
		return err
	}
	list, err := s.store.ListNetworks(r.Context(), c.AccountID)
	if err != nil {
		return err
	}
	out := []network.Summary{}
	for _, n := range list {
		sum := networkOf(n, nil)
		typ := "builtin"
		if n.OwnerID != nil {
			typ = "custom"
		}
		if !matchAny(args, "driver", func(v string) bool { return v == sum.Driver }) ||
			!matchAny(args, "id", func(v string) bool { return strings.HasPrefix(sum.ID, v) || v == n.ID }) ||
			!matchAny(args, "name", func(v string) bool { return strings.Contains(n.Name, v) }) ||
			!matchAny(args, "scope", func(v string) bool { return v == sum.Scope }) ||
			!matchAny(args, "type", func(v string) bool { return v == typ }) ||
			!matchLabels(args, "label", sum.Labels) || args.Contains("dangling") {
			continue
		}
		out = append(out, sum)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) inspectNetwork(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	n, err := s.resolveNetwork(r.Context(), c, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	containers, err := s.listContainers(r.Context(), c)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, networkOf(n, containers))
}

// createNetwork makes a private network of the caller's, with the subnet
// asked for or a free 192.168.x.0/24 of its own.
func (s *Server) createNetwork(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	var req network.CreateRequest
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	if req.Name == "" {
		return errdefs.InvalidArgument("network name is required")
	}
	switch req.Driver {
	case "", "bridge", "flotilla", "overlay":
	default:
		return errdefs.InvalidArgument("network driver %q is not supported: networks here are private overlay networks (driver flotilla)", req.Driver)
	}
	if req.EnableIPv6 != nil && *req.EnableIPv6 {
		return errdefs.InvalidArgument("IPv6 networks are not supported yet")
	}
	n := store.Network{Name: req.Name, InternetNAT: !req.Internal, Labels: req.Labels,
		Description: "Docker network " + req.Name, Resolvers: []string{}, Routes: map[string]any{}}
	if req.IPAM != nil && len(req.IPAM.Config) > 0 {
		if len(req.IPAM.Config) > 1 {
			return errdefs.InvalidArgument("only one IPAM subnet per network is supported")
		}
		cfg := req.IPAM.Config[0]
		if cfg.Subnet == "" && (cfg.Gateway != "" || cfg.IPRange != "") {
			return errdefs.InvalidArgument("a gateway or IP range needs a subnet: give --subnet too")
		}
		if cfg.Subnet != "" {
			p, err := store.ParseSubnet(cfg.Subnet, false)
			if err != nil {
				return err
			}
			n.Subnet = p.String()
		}
		if cfg.Gateway != "" {
			gw := cfg.Gateway
			n.Gateway = &gw
		}
		if cfg.IPRange != "" {
			p, err := netip.ParsePrefix(cfg.IPRange)
			if err != nil || !p.Addr().Is4() {
				return errdefs.InvalidArgument("invalid IP range %q: use IPv4 CIDR notation inside the subnet, such as 192.168.10.128/25", cfg.IPRange)
			}
			n.ProvisionStart = p.Masked().Addr().Next().String()
			n.ProvisionEnd = lastHost(p).String()
		}
	}
	// Docker networks are fabric networks on the account's default VLAN
	// (as sdc-docker made them), numbered from the operator's subnet pool.
	created, err := s.Service.CreateDockerNetwork(r.Context(), c, n)
	if err != nil {
		if errdefs.Is(err, errdefs.Conflict) && strings.Contains(errdefs.MessageOf(err), "already exists") {
			return errdefs.Conflictf("network with name %s already exists", req.Name)
		}
		return err
	}
	s.recordObjectEvent(r.Context(), Caller(r), created.ID, events.NetworkEventType, events.ActionCreate, NetworkID(created.ID), map[string]string{"name": created.Name, "type": "bridge"})
	return writeJSON(w, http.StatusCreated, network.CreateResponse{ID: NetworkID(created.ID), Warning: ""})
}

func lastHost(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := bits; i < 32; i++ {
		a[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(a).Prev()
}

func (s *Server) deleteNetwork(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ref := chi.URLParam(r, "id")
	n, err := s.resolveNetwork(r.Context(), c, ref)
	if err != nil {
		return err
	}
	if n.OwnerID == nil {
		return errdefs.New(errdefs.Forbidden, "%s is a pre-defined network and cannot be removed", n.Name)
	}
	err = s.store.DeleteNetwork(r.Context(), c.AccountID, n.ID)
	if errdefs.Is(err, errdefs.Conflict) && s.awaitLeaving(r.Context(), c, n) {
		err = s.store.DeleteNetwork(r.Context(), c.AccountID, n.ID)
	}
	if err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			return errdefs.New(errdefs.Forbidden, "error while removing network: network %s id %s has active endpoints", n.Name, NetworkID(n.ID))
		}
		return err
	}
	s.recordObjectEvent(r.Context(), c, n.ID, events.NetworkEventType, events.ActionDestroy, NetworkID(n.ID), map[string]string{"name": n.Name, "type": "bridge"})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// awaitLeaving waits until the instances being removed that still hold a
// NIC on n are gone (see awaitRemoved), and reports whether any were
// waited for: docker compose down removes the project's containers, then
// its networks.
func (s *Server) awaitLeaving(ctx context.Context, c service.Caller, n store.Network) bool {
	list, err := s.store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Limit: 100000})
	if err != nil {
		return false
	}
	var on []store.Instance
	for _, in := range list {
		if slices.ContainsFunc(in.NICs, func(nic store.NIC) bool { return nic.NetworkID == n.ID }) {
			on = append(on, in)
		}
	}
	return s.awaitRemoved(ctx, c, on)
}

// connectNetwork gives a container a NIC on a network (docker network
// connect [--alias]): the same NIC a CloudAPI AddNic makes, plumbed live
// into a running container by its node. It answers once the node has
// applied it (or ConvergeTimeout has passed: the change is recorded and the
// node will get there).
func (s *Server) connectNetwork(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	var req network.ConnectOptions
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	in, err := s.resolveContainer(r.Context(), c, req.Container)
	if err != nil {
		return err
	}
	n, err := s.resolveNetwork(r.Context(), c, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	aliases, err := connectAliases(n, req.EndpointConfig)
	if err != nil {
		return err
	}
	for _, nic := range in.NICs {
		if nic.NetworkID == n.ID {
			return errAlreadyConnected(in, n)
		}
	}
	if _, err := s.Service.ConnectNetwork(r.Context(), c, in.ID, n.ID, aliases); err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			return errAlreadyConnected(in, n)
		}
		if errdefs.Is(err, errdefs.Gone) {
			return notFoundContainer(req.Container)
		}
		return err
	}
	if err := s.waitApplied(r.Context(), c, in); err != nil {
		return err
	}
	s.recordObjectEvent(r.Context(), c, n.ID, events.NetworkEventType, events.ActionConnect, NetworkID(n.ID),
		map[string]string{"container": ContainerID(in.ID), "name": n.Name, "type": "bridge"})
	w.WriteHeader(http.StatusOK)
	return nil
}

// disconnectNetwork removes a container's NIC on a network (docker network
// disconnect [-f]), with its address and aliases there, live from a
// running container. -f is accepted: the control plane's record is the
// authority, so a disconnect is always complete once it answers.
func (s *Server) disconnectNetwork(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	var req network.DisconnectOptions
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	in, err := s.resolveContainer(r.Context(), c, req.Container)
	if err != nil {
		return err
	}
	n, err := s.resolveNetwork(r.Context(), c, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	if err := s.Service.DisconnectNetwork(r.Context(), c, in.ID, n.ID); err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			return errdefs.New(errdefs.Forbidden, "container %s is not connected to network %s", ContainerID(in.ID), n.Name)
		}
		if errdefs.Is(err, errdefs.Gone) {
			return notFoundContainer(req.Container)
		}
		return err
	}
	if err := s.waitApplied(r.Context(), c, in); err != nil {
		return err
	}
	s.recordObjectEvent(r.Context(), c, n.ID, events.NetworkEventType, events.ActionDisconnect, NetworkID(n.ID),
		map[string]string{"container": ContainerID(in.ID), "name": n.Name, "type": "bridge"})
	w.WriteHeader(http.StatusOK)
	return nil
}

// errAlreadyConnected is dockerd's answer to a second connect (403).
func errAlreadyConnected(in store.Instance, n store.Network) error {
	return errdefs.New(errdefs.Forbidden, "endpoint with name %s already exists in network %s", in.Name, n.Name)
}

// waitApplied waits until the container's node has applied its last change
// when it has a node to apply it.
func (s *Server) waitApplied(ctx context.Context, c service.Caller, in store.Instance) error {
	if in.NodeID == nil {
		return nil
	}
	_, err := s.converge(ctx, c, in.ID, s.cfg.ConvergeTimeout, observed)
	return err
}

// connectAliases checks a connect's endpoint settings and returns its
// aliases. What this cloud cannot honour is refused, saying why: a fixed
// address (addresses come from the network's IPAM), links, driver options,
// a gateway priority (the first network's gateway is the default route)
// and a chosen MAC address.
func connectAliases(n store.Network, ep *network.EndpointSettings) ([]string, error) {
	if ep == nil {
		return nil, nil
	}
	if c := ep.IPAMConfig; c != nil && (c.IPv4Address != "" || c.IPv6Address != "" || len(c.LinkLocalIPs) > 0) {
		return nil, errdefs.InvalidArgument("a fixed address (--ip, --ip6, --link-local-ip) on network %s is not supported by this cloud yet: every container gets an address from its network's IPAM; leave them out", n.Name)
	}
	switch {
	case len(ep.Links) > 0:
		return nil, errdefs.InvalidArgument("--link is not supported by this cloud: containers on a network find each other by name through its resolver")
	case len(ep.DriverOpts) > 0:
		return nil, errdefs.InvalidArgument("--driver-opt is not supported by this cloud: network %s has no driver options", n.Name)
	case ep.GwPriority != 0:
		return nil, errdefs.InvalidArgument("--gw-priority is not supported by this cloud: a container's default route is via its first network's gateway")
	case ep.MacAddress != "":
		return nil, errdefs.InvalidArgument("a fixed MAC address is not supported by this cloud: every NIC gets one of its own")
	case len(ep.Aliases) > maxDNSEntries:
		return nil, errdefs.InvalidArgument("at most %d aliases per network are allowed", maxDNSEntries)
	}
	var out []string
	for _, a := range ep.Aliases {
		if !aliasRE.MatchString(a) {
			return nil, errdefs.InvalidArgument("invalid network alias %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, up to 63 characters", a)
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}
