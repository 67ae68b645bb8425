package agentapi

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/store"
)

const maxBody = 1 << 20

func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	tok := bearer(r)
	if tok == "" {
		return errdefs.New(errdefs.Unauthorized, "registering needs a join token: send Authorization: Bearer <token> (mint one with `flotilla admin node join-token`)")
	}
	var req wire.RegisterRequest
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	if req.Name == "" {
		return errdefs.InvalidArgument("name is required")
	}
	if req.MemoryMiB < 0 || req.DiskMiB < 0 || req.VCPUs < 0 {
		return errdefs.InvalidArgument("capacity must not be negative")
	}
	if err := checkCgroups(req.Cgroups); err != nil {
		return err
	}
	cred := NewToken()
	join := store.NodeJoin{TokenHash: HashToken(tok), CredentialHash: HashToken(cred)}
	if req.CurrentCredential != "" {
		join.ProofHash = HashToken(req.CurrentCredential)
	}
	n, err := s.store.JoinNode(r.Context(), store.NodeRegistration{Name: req.Name, Hostname: req.Hostname,
		Driver: req.Driver, Brands: req.Brands, Traits: req.Traits, Address: req.Address, MemoryMiB: req.MemoryMiB,
		DiskMiB: req.DiskMiB, VCPUsMilli: int64(req.VCPUs * 1000),
		CgroupVersion: req.CgroupVersion, CgroupDriver: req.CgroupDriver}, join)
	if err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			s.log.Warn("node registration refused", "name", req.Name, "error", err)
		}
		return err
	}
	if err := s.store.SetNodeStreamToken(r.Context(), n.ID, req.StreamToken); err != nil {
		return err
	}
	s.forgetCredentials()
	s.log.Info("node registered", "node", n.ID, "name", n.Name, "driver", n.Driver)
	return httpx.WriteJSON(w, http.StatusOK, wire.RegisterResponse{NodeID: n.ID, Credential: cred})
}

// certificate signs the node's stream server certificate for the public
// key the agent sends; its name is the node's (wire.NodeCertName).
func (s *Server) certificate(w http.ResponseWriter, r *http.Request) error {
	if s.nodeCA == nil {
		return errdefs.New(errdefs.NotImplemented, "this control plane signs no node certificates (it has no node CA)")
	}
	var req wire.CertificateRequest
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	block, _ := pem.Decode([]byte(req.PublicKey))
	if block == nil || block.Type != "PUBLIC KEY" {
		return errdefs.InvalidArgument("public_key must be a PEM \"PUBLIC KEY\" block (PKIX)")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return errdefs.InvalidArgument("public_key is not a valid PKIX public key: %v", err)
	}
	cert, err := s.nodeCA.IssueNodeCertificate(wire.NodeCertName(nodeOf(r)), pub)
	if err != nil {
		return err
	}
	s.log.Info("node certificate issued", "node", nodeOf(r))
	return httpx.WriteJSON(w, http.StatusOK, wire.CertificateResponse{Certificate: string(cert), CA: string(s.nodeCA.CAPEM())})
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	var hb wire.Heartbeat
	if err := httpx.DecodeJSON(r, maxBody, false, &hb); err != nil {
		return err
	}
	if err := checkCgroups(hb.Cgroups); err != nil {
		return err
	}
	if _, err := s.store.Heartbeat(r.Context(), nodeOf(r), store.Heartbeat{MemoryMiB: hb.MemoryMiB, DiskMiB: hb.DiskMiB,
		VCPUsMilli: int64(hb.VCPUs * 1000), Brands: hb.Brands, Traits: hb.Traits, Address: hb.Address, UnderlayIP: hb.UnderlayIP,
		CgroupVersion: hb.CgroupVersion, CgroupDriver: hb.CgroupDriver}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// checkCgroups refuses cgroup names Docker does not know.
func checkCgroups(c wire.Cgroups) error {
	switch c.CgroupVersion {
	case "", "1", "2":
	default:
		return errdefs.InvalidArgument("cgroup_version %q: want \"1\", \"2\" or nothing", c.CgroupVersion)
	}
	switch c.CgroupDriver {
	case "", "cgroupfs", "systemd":
	default:
		return errdefs.InvalidArgument("cgroup_driver %q: want \"cgroupfs\", \"systemd\" or nothing", c.CgroupDriver)
	}
	return nil
}

func (s *Server) assignments(w http.ResponseWriter, r *http.Request) error {
	nodeID := nodeOf(r)
	since, err := queryInt(r, "since", 0)
	if err != nil {
		return err
	}
	waitSec, err := queryInt(r, "wait", 30)
	if err != nil {
		return err
	}
	waitSec = min(waitSec, 60)
	deadline := time.NewTimer(time.Duration(waitSec) * time.Second)
	defer deadline.Stop()
	for {
		// Register interest before reading, so a change between the read and
		// the wait still wakes us.
		woken, cancel := s.waiters.Wait(nodeID)
		list, rev, err := s.store.Assignments(r.Context(), nodeID, since, 5000)
		if err != nil {
			cancel()
			return err
		}
		if len(list) > 0 || since == 0 || waitSec == 0 {
			cancel()
			out := wire.Assignments{Revision: rev, Full: since == 0, Assignments: make([]wire.Assignment, 0, len(list))}
			if out.Peers, err = s.store.UnderlayPeers(r.Context(), nodeID); err != nil {
				return err
			}
			images := map[string]store.Image{}
			ids := make([]string, len(list))
			for i, in := range list {
				ids[i] = in.ID
			}
			snaps, restores, err := s.store.SnapshotAssignments(r.Context(), ids)
			if err != nil {
				return err
			}
			disks, err := s.store.DiskAssignments(r.Context(), ids)
			if err != nil {
				return err
			}
			imports, err := s.store.MigrationImports(r.Context(), nodeID, ids)
			if err != nil {
				return err
			}
			for _, in := range list {
				a, err := s.assignment(r, in, images)
				if err != nil {
					return err
				}
				addSnapshots(&a, snaps[in.ID], restores[in.ID])
				addDisks(&a, disks[in.ID])
				a.ImportDisk = imports[in.ID]
				out.Assignments = append(out.Assignments, a)
			}
			if err := s.addVolumeHomes(r.Context(), nodeID, out.Assignments); err != nil {
				return err
			}
			return httpx.WriteJSON(w, http.StatusOK, out)
		}
		select {
		case <-woken:
		case <-deadline.C:
			cancel()
			peers, err := s.store.UnderlayPeers(r.Context(), nodeID)
			if err != nil {
				return err
			}
			return httpx.WriteJSON(w, http.StatusOK, wire.Assignments{Revision: since, Assignments: []wire.Assignment{}, Peers: peers})
		case <-r.Context().Done():
			cancel()
			return nil
		}
	}
}

// assignment builds what the agent needs from an instance row.
func (s *Server) assignment(r *http.Request, in store.Instance, images map[string]store.Image) (wire.Assignment, error) {
	im, ok := images[in.ImageID]
	if !ok {
		var err error
		im, err = s.imageContent(r.Context(), in.ImageID)
		if err != nil && !errdefs.Is(err, errdefs.NotFound) {
			return wire.Assignment{}, err
		}
		images[in.ImageID] = im
	}
	proc := service.DecodeProcessSpec(in.Spec)
	md := map[string]string{}
	for k, v := range in.Metadata {
		if str, ok := v.(string); ok {
			md[k] = str
		}
	}
	spec := driver.Spec{
		ID: in.ID, OwnerID: in.OwnerID, Name: in.Name, Brand: in.Brand,
		Image:     driver.Image{ID: im.ID, Digest: im.ManifestDigest, Type: im.Type, Ref: s.imageRef(im)},
		MemoryMiB: in.MemoryMiB, DiskMiB: in.DiskMiB, VCPUs: float64(in.VCPUsMilli) / 1000,
		Entrypoint: proc.Entrypoint, Cmd: proc.Cmd, Env: proc.Env, WorkingDir: proc.WorkingDir, User: proc.User,
		Hostname: proc.Hostname, Tty: proc.Tty, OpenStdin: proc.OpenStdin, StdinOnce: proc.StdinOnce,
		Labels: proc.Labels, Metadata: md, Restart: proc.Restart, Autoboot: !in.Docker,
		StopSignal: proc.StopSignal, StopTimeout: proc.StopTimeout, Options: proc.Options,
		PIDsLimit: proc.PIDsLimit, Healthcheck: proc.Healthcheck,
	}
	if spec.PIDsLimit <= 0 { // instances created before limits were recorded
		spec.PIDsLimit = driver.DefaultPIDsLimit
	}
	if spec.Hostname == "" {
		spec.Hostname = in.Name
		if len(spec.Hostname) > 63 {
			spec.Hostname = in.ID[:12]
		}
	}
	for _, n := range in.NICs {
		prefix := 24
		if p, err := netip.ParsePrefix(n.Subnet); err == nil {
			prefix = p.Bits()
		}
		nic := driver.NIC{MAC: n.MAC, IP: n.IP, PrefixLen: prefix, NetworkID: n.NetworkID, Bridge: n.Bridge,
			Subnet: n.Subnet, Primary: n.Primary, NAT: n.InternetNAT, Resolvers: n.Resolvers, VNI: n.VNI, VLANID: n.VLANID}
		if n.Gateway != nil {
			nic.Gateway = *n.Gateway
		}
		spec.NICs = append(spec.NICs, nic)
	}
	spec.DNS = dnsConfig(proc.DNS, spec.NICs)
	return wire.Assignment{ID: in.ID, Generation: in.Generation, DesiredState: in.DesiredState,
		RebootCount: in.RebootCount, Spec: spec}, nil
}

// dnsConfig is the instance's resolv.conf: the user's nameservers if any,
// else the node's resolver on the primary NIC's gateway (with ndots:0, as
// Docker sets for its own resolver), else the network's resolvers.
func dnsConfig(user driver.DNSConfig, nics []driver.NIC) driver.DNSConfig {
	out := user
	if len(out.Nameservers) > 0 || len(nics) == 0 {
		return out
	}
	nic := nics[0]
	for _, n := range nics {
		if n.Primary {
			nic = n
			break
		}
	}
	if nic.Gateway == "" {
		out.Nameservers = nic.Resolvers
		return out
	}
	out.Nameservers = []string{nic.Gateway}
	if len(out.Options) == 0 {
		out.Options = []string{"ndots:0"}
	}
	return out
}

func (s *Server) imageRef(im store.Image) string {
	if im.ManifestDigest == "" || s.ImageRegistry == "" {
		return ""
	}
	return s.ImageRegistry + "/images/" + im.ID + "@" + im.ManifestDigest
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	var st wire.InstanceStatus
	if err := httpx.DecodeJSON(r, maxBody, false, &st); err != nil {
		return err
	}
	switch st.State {
	case driver.StateProvisioning, driver.StateRunning, driver.StateStopping, driver.StateStopped, driver.StateFailed, wire.StateDeleted:
	default:
		return errdefs.InvalidArgument("unknown state %q", st.State)
	}
	rep := store.StatusReport{ObservedGeneration: st.ObservedGeneration, RebootCount: st.RebootCount, State: st.State,
		ExitCode: st.ExitCode, Error: truncate(st.Error, 4096), Restarts: st.Restarts,
		RestoreCount: st.RestoreCount}
	if !st.StartedAt.IsZero() {
		rep.StartedAt = &st.StartedAt
	}
	if !st.FinishedAt.IsZero() {
		rep.FinishedAt = &st.FinishedAt
	}
	if h := st.Health; h != nil {
		switch h.Status {
		case wire.HealthStarting, wire.HealthHealthy, wire.HealthUnhealthy:
		default:
			return errdefs.InvalidArgument("unknown health status %q", h.Status)
		}
		rep.Health = &store.Health{Status: h.Status, FailingStreak: h.FailingStreak}
		for _, r := range h.Log[max(len(h.Log)-wire.HealthLogSize, 0):] {
			rep.Health.Log = append(rep.Health.Log, store.HealthResult{Start: r.Start, End: r.End, ExitCode: r.ExitCode,
				Output: truncate(r.Output, wire.HealthOutputMax+len("..."))})
		}
	}
	for _, sn := range st.Snapshots {
		rep.Snapshots = append(rep.Snapshots, store.SnapshotReport{Name: sn.Name, State: sn.State,
			Error: truncate(sn.Error, 4096), SizeBytes: sn.SizeBytes})
	}
	if err := s.store.ReportStatus(r.Context(), nodeOf(r), chi.URLParam(r, "id"), rep); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// addSnapshots puts an instance's snapshots and its latest start from a
// snapshot into its assignment.
func addSnapshots(a *wire.Assignment, snaps []store.SnapshotWant, restore store.Restore) {
	for _, sn := range snaps {
		a.Snapshots = append(a.Snapshots, wire.SnapshotWant{Name: sn.Name, Desired: sn.Desired, State: sn.State})
	}
	a.RestoreCount, a.RestoreSnapshot = restore.Count, restore.Snapshot
}

// addDisks puts a flexible-disk VM's disks into its assignment: the boot
// disk's size is the spec's disk size, the others are its data disks.
func addDisks(a *wire.Assignment, disks []store.DiskWant) {
	for _, d := range disks {
		if d.Boot {
			a.Spec.DiskMiB = d.SizeMiB
			continue
		}
		a.Spec.Disks = append(a.Spec.Disks, driver.Disk{ID: d.ID, Slot: d.Slot, SizeMiB: d.SizeMiB})
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// imageContent returns the image's content fields (id, type, manifest
// digest), which never change once an image has content: they are kept
// for the server's lifetime, saving a query for every assignment.
func (s *Server) imageContent(ctx context.Context, id string) (store.Image, error) {
	s.imageMu.Lock()
	im, ok := s.images[id]
	s.imageMu.Unlock()
	if ok {
		return im, nil
	}
	full, err := s.store.ImageByID(ctx, id)
	if err != nil {
		return store.Image{}, err
	}
	im = store.Image{ID: full.ID, Type: full.Type, ManifestDigest: full.ManifestDigest}
	if im.ManifestDigest != "" {
		s.imageMu.Lock()
		if s.images == nil || len(s.images) > 10000 {
			s.images = map[string]store.Image{}
		}
		s.images[id] = im
		s.imageMu.Unlock()
	}
	return im, nil
}

// addVolumeHomes fills in the size of the volumes the assignments mount
// and, for a shared (tritonnfs) volume that lives on another node, how to
// reach that node's share of it.
func (s *Server) addVolumeHomes(ctx context.Context, nodeID string, list []wire.Assignment) error {
	var ids []string
	for _, a := range list {
		for _, v := range a.Spec.Options.Volumes {
			ids = append(ids, v.Volume)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	homes, err := s.store.VolumeHomes(ctx, ids)
	if err != nil {
		return err
	}
	for i := range list {
		vols := slices.Clone(list[i].Spec.Options.Volumes)
		for j, v := range vols {
			h, ok := homes[v.Volume]
			if !ok {
				continue
			}
			vols[j].SizeMiB = h.SizeMiB
			if h.Type == service.VolumeTypeTritonNFS && h.Node.NodeID != "" && h.Node.NodeID != nodeID {
				vols[j].Remote = &driver.RemoteVolume{Node: h.Node.NodeID, Address: h.Node.Address,
					Token: wire.VolumeShareToken(h.Node.Token, v.Volume), TLS: s.nodeCA != nil}
			}
		}
		list[i].Spec.Options.Volumes = vols
	}
	return nil
}
