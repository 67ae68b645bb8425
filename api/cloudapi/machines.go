package cloudapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/scheduler"
	"flotilla/store"
)

func (s *Server) machineRoutes(r chi.Router) {
	getHead(r, "/machines", s.handle(s.listMachines))
	r.Post("/machines", s.handle(s.createMachine))
	getHead(r, "/machines/{id}", s.handle(s.getMachine))
	r.Post("/machines/{id}", s.handle(s.actOnMachine))
	r.Delete("/machines/{id}", s.handle(s.deleteMachine))
	getHead(r, "/machines/{id}/audit", s.handle(s.machineAudit))
	getHead(r, "/machines/{id}/tags", s.handle(s.listTags))
	getHead(r, "/machines/{id}/tags/{tag}", s.handle(s.getTag))
	r.Post("/machines/{id}/tags", s.handle(s.addTags))
	r.Put("/machines/{id}/tags", s.handle(s.replaceTags))
	r.Delete("/machines/{id}/tags", s.handle(s.deleteTags))
	r.Delete("/machines/{id}/tags/{tag}", s.handle(s.deleteTag))
	getHead(r, "/machines/{id}/metadata", s.handle(s.listMetadata))
	getHead(r, "/machines/{id}/metadata/{key}", s.handle(s.getMetadata))
	r.Post("/machines/{id}/metadata", s.handle(s.updateMetadata))
	r.Delete("/machines/{id}/metadata", s.handle(s.deleteAllMetadata))
	r.Delete("/machines/{id}/metadata/{key}", s.handle(s.deleteMetadata))
	getHead(r, "/machines/{id}/nics", s.handle(s.listNics))
	getHead(r, "/machines/{id}/nics/{mac}", s.handle(s.getNic))
	getHead(r, "/machines/{id}/fwrules", s.handle(s.listMachineFwrules))
	s.snapshotRoutes(r)
	s.diskRoutes(r)
	s.migrationRoutes(r)
	r.Get("/changefeed", s.handle(s.changefeed))
}

// machineType is CloudAPI's deprecated type field.
func machineType(brand string) string {
	if brand == "bhyve" || brand == "kvm" {
		return "virtualmachine"
	}
	return "smartmachine"
}

func nicJSON(n store.NIC, in store.Instance) map[string]any {
	m := map[string]any{"mac": n.MAC, "ip": n.IP, "primary": n.Primary, "netmask": netmask(n.Subnet),
		"state": nicState(n, in), "network": n.NetworkID}
	if n.Gateway != nil {
		m["gateway"] = *n.Gateway
	}
	return m
}

// nicState is the instance's settled state once its node has applied the
// NIC (reported the generation the NIC was added at), and "provisioning"
// until then: `triton inst nic create -w` waits for "running".
func nicState(n store.NIC, in store.Instance) string {
	switch in.State {
	case "running", "stopped":
		if in.ObservedGeneration < n.Generation && in.DesiredState != "deleted" {
			return "provisioning"
		}
		return in.State
	case "deleted":
		return "stopped"
	}
	return "provisioning"
}

func netmask(cidr string) string {
	i := strings.IndexByte(cidr, '/')
	if i < 0 {
		return "255.255.255.255"
	}
	bits, _ := strconv.Atoi(cidr[i+1:])
	m := uint32(0xffffffff) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}

// machineJSON renders an instance as CloudAPI's machine object (§4.1).
func machineJSON(in store.Instance, credentials bool) map[string]any {
	ips := []string{}
	networks := []string{}
	nics := []any{}
	primary := ""
	for _, n := range in.NICs {
		ips = append(ips, n.IP)
		networks = append(networks, n.NetworkID)
		nics = append(nics, nicJSON(n, in))
		if n.Primary && primary == "" {
			primary = n.IP
		}
	}
	if primary == "" && len(in.NICs) > 0 {
		primary = in.NICs[0].IP
	}
	md := in.Metadata
	if md == nil {
		md = map[string]any{}
	}
	tags := in.Tags
	if tags == nil {
		tags = map[string]any{}
	}
	m := map[string]any{
		"id": in.ID, "name": in.Name, "type": machineType(in.Brand), "brand": in.Brand, "state": in.State,
		"image": in.ImageID, "ips": ips, "memory": in.MemoryMiB, "disk": in.DiskMiB,
		"deletion_protection": in.DeletionProtection, "metadata": md, "tags": tags,
		"created": isoTime(in.CreatedAt), "updated": isoTime(in.UpdatedAt), "networks": networks,
		"firewall_enabled": in.FirewallEnabled, "compute_node": in.NodeID, "package": in.PackageName,
	}
	if len(in.NICs) > 0 {
		m["nics"] = nics
		m["primaryIp"] = primary
	}
	if in.Docker {
		m["docker"] = true
	}
	if credentials {
		m["credentials"] = true
	}
	return m
}

// getOwned loads one of the caller's machines; deleted ones are 410 with their JSON.
func (s *Server) getOwned(r *http.Request) (store.Instance, error) {
	in, err := s.store.GetInstance(r.Context(), caller(r).AccountID, pathParam(r, "id"))
	if err != nil {
		return store.Instance{}, err
	}
	if in.State == "deleted" {
		return store.Instance{}, &errdefs.Error{Code: errdefs.Gone, Message: "VM has been deleted", Detail: in}
	}
	return in, nil
}

var listStates = map[string][]string{
	"provisioning": {"provisioning", "stopping", "ready"}, "stopping": {"provisioning", "stopping", "ready"},
	"active": {"provisioning", "stopping", "ready"}, "running": {"running"}, "stopped": {"stopped"},
	"unknown": {"unknown", "offline"}, "destroyed": {"deleted"},
}

func (s *Server) listFilter(r *http.Request) (store.InstanceFilter, error) {
	q := r.URL.Query()
	f := store.InstanceFilter{Name: q.Get("name"), Brand: q.Get("brand"), Image: q.Get("image")}
	if st := q.Get("state"); st != "" {
		states, ok := listStates[st]
		if !ok {
			return f, errdefs.InvalidArgument("%s is not a valid state", st)
		}
		f.States = states
	}
	if t := q.Get("type"); t != "" {
		switch t {
		case "smartmachine", "virtualmachine":
		default:
			return f, errdefs.InvalidArgument("%s is not a valid type", t)
		}
	}
	if v := q.Get("memory"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return f, errdefs.InvalidArgument("memory must be a number")
		}
		f.Memory = n
	}
	if v := q.Get("docker"); v != "" {
		b, err := boolParam(v)
		if err != nil {
			return f, errdefs.InvalidArgument("docker must be true or false")
		}
		f.Docker = &b
	}
	if v := q.Get("tombstone"); v != "" {
		f.Deleted = true
	}
	if q.Get("tags") == "*" {
		f.Tagged = true
	}
	for k, vs := range q {
		if strings.HasPrefix(k, "tag.") && len(vs) > 0 {
			if f.Tags == nil {
				f.Tags = map[string]string{}
			}
			f.Tags[k[4:]] = vs[len(vs)-1]
		}
	}
	limit, offset, err := paging(r)
	f.Limit, f.Offset = limit, offset
	return f, err
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) error {
	f, err := s.listFilter(r)
	if err != nil {
		return err
	}
	list, err := s.store.ListInstances(r.Context(), caller(r).AccountID, f)
	if err != nil {
		return err
	}
	typ := r.URL.Query().Get("type")
	out := make([]any, 0, len(list))
	for _, in := range list {
		if typ != "" && machineType(in.Brand) != typ {
			continue
		}
		out = append(out, machineJSON(in, false))
	}
	w.Header().Set("x-query-limit", strconv.Itoa(f.Limit))
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	m := machineJSON(in, r.URL.Query().Get("credentials") == "true")
	if err := s.addDisks(r, in, m); err != nil {
		return err
	}
	if s.cfg.CNS.Suffix != "" {
		acct, err := s.store.AccountByID(r.Context(), in.OwnerID)
		if err != nil {
			return err
		}
		if !acct.TritonCNSEnabled {
			return writeJSON(w, r, http.StatusOK, m)
		}
		names := s.cfg.CNS.DNSNames(acct.Login, in.OwnerID, in.ID, in.Name, in.Tags)
		if names == nil {
			names = []string{}
		}
		m["dns_names"] = names
	}
	return writeJSON(w, r, http.StatusOK, m)
}

// createParams turns CreateMachine's merged params into a service request.
func createParams(p map[string]any) (service.CreateRequest, error) {
	var req service.CreateRequest
	var err error
	if req.Name, err = stringParam(p, "name"); err != nil {
		return req, err
	}
	image, err := stringParam(p, "image")
	if err != nil {
		return req, err
	}
	dataset, err := stringParam(p, "dataset")
	if err != nil {
		return req, err
	}
	if image != "" && dataset != "" {
		return req, errdefs.InvalidArgument("image and dataset cannot both be given")
	}
	req.Image = image + dataset
	if req.Package, err = stringParam(p, "package"); err != nil {
		return req, err
	}
	if req.Brand, err = stringParam(p, "brand"); err != nil {
		return req, err
	}
	switch nets := p["networks"].(type) {
	case nil:
	case string:
		for _, n := range strings.Split(nets, ",") {
			if n = strings.TrimSpace(n); n != "" {
				req.Networks = append(req.Networks, n)
			}
		}
	case []any:
		for _, n := range nets {
			switch v := n.(type) {
			case string:
				req.Networks = append(req.Networks, v)
			case map[string]any:
				id, _ := v["ipv4_uuid"].(string)
				if id == "" {
					return req, errdefs.InvalidArgument("Invalid Networks: each network object needs ipv4_uuid")
				}
				req.Networks = append(req.Networks, id)
			default:
				return req, errdefs.InvalidArgument("Invalid Networks")
			}
		}
	default:
		return req, errdefs.InvalidArgument("Invalid Networks")
	}
	switch a := p["affinity"].(type) {
	case nil:
	case string:
		req.Affinity = []string{a}
	case []any:
		for _, x := range a {
			sx, ok := x.(string)
			if !ok {
				return req, errdefs.InvalidArgument("affinity must be a string or an array of strings")
			}
			req.Affinity = append(req.Affinity, sx)
		}
	default:
		return req, errdefs.InvalidArgument("affinity must be a string or an array of strings")
	}
	if req.Volumes, err = volumeMounts(p["volumes"]); err != nil {
		return req, err
	}
	if req.Disks, err = diskRequests(p["disks"]); err != nil {
		return req, err
	}
	if loc, ok := p["locality"]; ok && loc != nil {
		var l scheduler.Locality
		b, _ := json.Marshal(loc)
		if err := json.Unmarshal(b, &l); err != nil {
			return req, errdefs.InvalidArgument("invalid locality: %v", err)
		}
		req.Locality = &l
	}
	for _, k := range []string{"firewall_enabled", "deletion_protection"} {
		if v, ok := p[k]; ok {
			b, err := boolParam(v)
			if err != nil {
				return req, errdefs.InvalidArgument("%s must be true or false", k)
			}
			if k == "firewall_enabled" {
				req.FirewallEnabled = b
			} else {
				req.DeletionProtection = b
			}
		}
	}
	for k, v := range p {
		switch {
		case strings.HasPrefix(k, "metadata."):
			if req.Metadata == nil {
				req.Metadata = map[string]any{}
			}
			req.Metadata[k[len("metadata."):]] = metadataValue(v)
		case strings.HasPrefix(k, "tag."):
			if req.Tags == nil {
				req.Tags = map[string]any{}
			}
			req.Tags[k[len("tag."):]] = tagValue(v)
		}
	}
	if md, ok := p["metadata"].(map[string]any); ok {
		if req.Metadata == nil {
			req.Metadata = map[string]any{}
		}
		for k, v := range md {
			req.Metadata[k] = metadataValue(v)
		}
	}
	if tags, ok := p["tags"].(map[string]any); ok {
		if req.Tags == nil {
			req.Tags = map[string]any{}
		}
		for k, v := range tags {
			req.Tags[k] = tagValue(v)
		}
	}
	return req, nil
}

// tagValue keeps strings, booleans and numbers as they came.
func tagValue(v any) any {
	if n, ok := v.(json.Number); ok {
		if i, err := n.Int64(); err == nil {
			return i
		}
		f, _ := n.Float64()
		return f
	}
	return v
}

// metadataValue stores metadata as strings, as CloudAPI does.
func metadataValue(v any) any {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func (s *Server) createMachine(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	req, err := createParams(p)
	if err != nil {
		return err
	}
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		if len(key) > 255 {
			return errdefs.InvalidArgument("Idempotency-Key must be at most 255 characters")
		}
		req.IdempotencyKey = key
		b, _ := json.Marshal(p) // map keys marshal sorted: a stable hash of the request
		sum := sha256.Sum256(b)
		req.RequestHash = hex.EncodeToString(sum[:])
	}
	c := caller(r)
	in, _, err := s.svc.CreateInstance(r.Context(), c, req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/"+c.Login+"/machines/"+in.ID)
	return writeJSON(w, r, http.StatusCreated, machineJSON(in, false))
}

func (s *Server) actOnMachine(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	action, err := stringParam(p, "action")
	if err != nil {
		return err
	}
	c, id := caller(r), pathParam(r, "id")
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	switch action {
	case "":
		return &errdefs.Error{Code: errdefs.Invalid, Message: "action is required", Reason: "MissingParameter"}
	case "start":
		_, err = s.svc.Start(r.Context(), c, id)
	case "stop":
		_, err = s.svc.Stop(r.Context(), c, id)
	case "reboot":
		_, err = s.svc.Reboot(r.Context(), c, id)
	case "rename":
		name, perr := stringParam(p, "name")
		if perr != nil {
			return perr
		}
		_, err = s.svc.Rename(r.Context(), c, id, name)
	case "resize":
		pkg, perr := stringParam(p, "package")
		if perr != nil {
			return perr
		}
		_, err = s.svc.Resize(r.Context(), c, id, pkg)
	case "enable_firewall", "disable_firewall":
		_, err = s.svc.SetFirewall(r.Context(), c, id, action == "enable_firewall")
	case "enable_deletion_protection", "disable_deletion_protection":
		_, err = s.svc.SetDeletionProtection(r.Context(), c, id, action == "enable_deletion_protection")
	case "migrate":
		ma, perr := stringParam(p, "migration_action")
		if perr != nil {
			return perr
		}
		return s.migrate(w, r, p, ma)
	default:
		return errdefs.InvalidArgument("%s is not a valid action", action)
	}
	if err != nil {
		return err
	}
	return noContent(w, http.StatusAccepted)
}

func (s *Server) deleteMachine(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if _, err := s.svc.Delete(r.Context(), caller(r), pathParam(r, "id")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}

func (s *Server) machineAudit(w http.ResponseWriter, r *http.Request) error {
	in, err := s.store.GetInstance(r.Context(), caller(r).AccountID, pathParam(r, "id"))
	if err != nil {
		return err
	}
	entries, err := s.store.ListInstanceAudit(r.Context(), caller(r).AccountID, in.ID)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(entries))
	for _, e := range entries {
		success := "yes"
		if !e.Success {
			success = "no"
		}
		out = append(out, map[string]any{"action": e.Action, "success": success, "time": isoTime(e.At), "caller": e.Caller})
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) listTags(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, in.Tags)
}

func (s *Server) getTag(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	key := pathParam(r, "tag")
	v, ok := in.Tags[key]
	if !ok {
		return errdefs.NotFoundf("tag %q not found", key)
	}
	if strings.Contains(r.Header.Get("Accept"), "text/plain") {
		body := fmt.Sprint(v)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, err := w.Write([]byte(body))
		return err
	}
	return writeJSON(w, r, http.StatusOK, v)
}

// tagBody reads a tag object from the merged params, keeping value types.
func tagBody(r *http.Request) (map[string]any, error) {
	p, err := params(r)
	if err != nil {
		return nil, err
	}
	tags := map[string]any{}
	for k, v := range p {
		switch v.(type) {
		case string, bool, json.Number:
			tags[k] = tagValue(v)
		default:
			return nil, errdefs.InvalidArgument("tag %q must be a string, number or boolean", k)
		}
	}
	return tags, nil
}

func (s *Server) addTags(w http.ResponseWriter, r *http.Request) error {
	return s.writeTags(w, r, false)
}

func (s *Server) replaceTags(w http.ResponseWriter, r *http.Request) error {
	return s.writeTags(w, r, true)
}

func (s *Server) writeTags(w http.ResponseWriter, r *http.Request, replace bool) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	tags, err := tagBody(r)
	if err != nil {
		return err
	}
	in, err := s.svc.SetTags(r.Context(), caller(r), pathParam(r, "id"), tags, replace)
	if err != nil {
		return err
	}
	w.Header().Set("x-job-uuid", fmt.Sprintf("%s-%d", in.ID[:8], in.Generation))
	return writeJSON(w, r, http.StatusOK, in.Tags)
}

func (s *Server) deleteTags(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if _, err := s.svc.DeleteTags(r.Context(), caller(r), pathParam(r, "id"), ""); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}

func (s *Server) deleteTag(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if _, err := s.svc.DeleteTags(r.Context(), caller(r), pathParam(r, "id"), pathParam(r, "tag")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}

func (s *Server) listMetadata(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	md := make(map[string]any, len(in.Metadata)+1)
	maps.Copy(md, in.Metadata)
	if r.URL.Query().Get("credentials") == "true" {
		// Passwords (*_pw) are never stored, so there are no credentials to show.
		md["credentials"] = map[string]any{}
	}
	return writeJSON(w, r, http.StatusOK, md)
}

func (s *Server) getMetadata(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	key := pathParam(r, "key")
	v, ok := in.Metadata[key]
	if !ok {
		return errdefs.NotFoundf("%s not found", key)
	}
	return writeJSON(w, r, http.StatusOK, v)
}

func (s *Server) updateMetadata(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	md := map[string]any{}
	for k, v := range p {
		md[k] = metadataValue(v)
	}
	in, err := s.svc.SetMetadata(r.Context(), caller(r), pathParam(r, "id"), md)
	if err != nil {
		return err
	}
	w.Header().Set("x-job-uuid", fmt.Sprintf("%s-%d", in.ID[:8], in.Generation))
	return writeJSON(w, r, http.StatusOK, in.Metadata)
}

func (s *Server) deleteMetadata(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if _, err := s.svc.DeleteMetadata(r.Context(), caller(r), pathParam(r, "id"), pathParam(r, "key")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}

func (s *Server) deleteAllMetadata(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if _, err := s.svc.DeleteMetadata(r.Context(), caller(r), pathParam(r, "id"), ""); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}

func (s *Server) listNics(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	out := []any{}
	for _, n := range in.NICs {
		out = append(out, nicJSON(n, in))
	}
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getNic(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	mac := strings.ToLower(strings.ReplaceAll(pathParam(r, "mac"), ":", ""))
	for _, n := range in.NICs {
		if strings.ReplaceAll(n.MAC, ":", "") == mac {
			return writeJSON(w, r, http.StatusOK, nicJSON(n, in))
		}
	}
	return errdefs.NotFoundf("nic %s not found", pathParam(r, "mac"))
}
