package service

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/google/uuid"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/scheduler"
	"flotilla/store"
)

// ProcessSpec is the container process part of an instance (from Docker's
// create or an image's defaults), stored as the instance's spec.
type ProcessSpec struct {
	Entrypoint []string             `json:"entrypoint,omitempty"`
	Cmd        []string             `json:"cmd,omitempty"`
	Env        []string             `json:"env,omitempty"`
	WorkingDir string               `json:"working_dir,omitempty"`
	User       string               `json:"user,omitempty"`
	Hostname   string               `json:"hostname,omitempty"`
	Tty        bool                 `json:"tty,omitempty"`
	OpenStdin  bool                 `json:"open_stdin,omitempty"`
	StdinOnce  bool                 `json:"stdin_once,omitempty"`
	Labels     map[string]string    `json:"labels,omitempty"`
	Restart    driver.RestartPolicy `json:"restart,omitempty"`
	// StopSignal (a Linux signal number, 0 = SIGTERM) and StopTimeout
	// (seconds, nil = the node's default) are how the instance is stopped.
	StopSignal  int  `json:"stop_signal,omitempty"`
	StopTimeout *int `json:"stop_timeout,omitempty"`
	// Options are Docker run options applied by container drivers.
	Options driver.ContainerOptions `json:"options,omitzero"`
	// DNS is the user's resolv.conf choice (Docker --dns, --dns-search,
	// --dns-option); empty nameservers mean the node's resolver.
	DNS driver.DNSConfig `json:"dns,omitzero"`
	// NetworkAliases are extra names per network id (Docker
	// --network-alias), answered by the node resolvers.
	NetworkAliases map[string][]string `json:"network_aliases,omitempty"`
	// PIDsLimit bounds the instance's processes and threads: the package's
	// lwps, or a lower limit the client asked for (docker --pids-limit).
	PIDsLimit int64 `json:"pids_limit,omitempty"`
	// Published are the ports Docker -p/-P publishes: reachable from any
	// address through the instance's firewall (see PublishedEntries).
	Published []PublishedPort `json:"published,omitempty"`
	// Healthcheck is a container's health check (Docker --health-cmd or
	// its image's HEALTHCHECK), run by its node.
	Healthcheck *driver.Healthcheck `json:"healthcheck,omitempty"`
	// Extra holds dialect-specific settings the Docker endpoint keeps for
	// inspect (ports, host config) without the service needing to know them.
	Extra json.RawMessage `json:"extra,omitempty"`
}

// PIDsLimit is the process limit of an instance of pkg whose client asked
// for requested (0 or less: none): the package's lwps, or the request if it
// is lower. An instance is never unlimited.
func PIDsLimit(pkg store.Package, requested int64) int64 {
	limit := int64(pkg.LWPs)
	if limit <= 0 {
		limit = driver.DefaultPIDsLimit
	}
	if requested > 0 && requested < limit {
		return requested
	}
	return limit
}

// DecodeProcessSpec reads an instance's spec column.
func DecodeProcessSpec(raw json.RawMessage) ProcessSpec {
	var p ProcessSpec
	if len(raw) > 0 {
		json.Unmarshal(raw, &p)
	}
	return p
}

// CreateRequest is a validated-enough create from either API.
type CreateRequest struct {
	Name      string
	Image     string // uuid
	Package   string // uuid or name; empty with MemoryMiB set picks the smallest that fits
	MemoryMiB int64  // Docker -m
	VCPUs     float64
	Networks  []string // ids or names; empty = defaults
	// PublicNIC also gives the instance a NIC on the first public network,
	// made its primary (Docker's published ports, as sdc-docker did),
	// unless it already has one.
	PublicNIC          bool
	Metadata           map[string]any
	Tags               map[string]any
	Affinity           []string
	Rules              []scheduler.Rule // already parsed rules (Docker), added to Affinity's
	Locality           *scheduler.Locality
	FirewallEnabled    bool
	DeletionProtection bool
	Brand              string
	Docker             bool
	Process            *ProcessSpec
	// Volumes are CloudAPI's volumes to mount (existing tritonnfs ones, by
	// name); Docker's come resolved in Process.Options.Volumes.
	Volumes []MountRequest
	// Disks are a flexible-disk VM's disks (CloudAPI's disks): see createDisks.
	Disks []DiskRequest
	Start *bool // Docker create: do not start until asked
	// NodeDriver, when set, restricts placement to nodes with that driver
	// (`docker build` runs its steps where containers can be committed).
	NodeDriver     string
	IdempotencyKey string
	RequestHash    string
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,188}$`)

// Brand of images by type.
func brandForImage(imageType, requested string) (string, error) {
	switch imageType {
	case "zvol":
		switch requested {
		case "", driver.BrandBhyve:
			return driver.BrandBhyve, nil
		case driver.BrandKVM:
			return driver.BrandKVM, nil
		}
		return "", errdefs.InvalidArgument("image of type zvol needs brand bhyve or kvm, not %q", requested)
	default:
		if requested == driver.BrandBhyve || requested == driver.BrandKVM {
			return "", errdefs.InvalidArgument("brand %s can only be used with a zvol (VM) image", requested)
		}
		if imageType == "lx-dataset" {
			return driver.BrandLX, nil
		}
		return driver.BrandContainer, nil
	}
}

// CreateInstance validates a request, resolves its image, package and
// networks, places it and records it. It returns the instance and whether it
// is the replay of an earlier request with the same Idempotency-Key.
func (s *Service) CreateInstance(ctx context.Context, c Caller, req CreateRequest) (store.Instance, bool, error) {
	acct, keys, err := s.Store.AccountWithKeys(ctx, c.AccountID)
	if err != nil {
		return store.Instance{}, false, err
	}
	if !acct.ApprovedForProvisioning {
		return store.Instance{}, false, errdefs.InvalidArgument("User is not currently approved for provisioning")
	}
	if req.Image == "" {
		return store.Instance{}, false, &errdefs.Error{Code: errdefs.Invalid, Message: "image must be specified", Reason: "MissingParameter"}
	}
	img, err := s.Store.GetImage(ctx, c.AccountID, req.Image)
	if err != nil {
		if errdefs.Is(err, errdefs.NotFound) {
			return store.Instance{}, false, errdefs.InvalidArgument("image %s not found", req.Image)
		}
		return store.Instance{}, false, err
	}
	if img.State != "active" {
		return store.Instance{}, false, errdefs.InvalidArgument("image %s is not active", img.ID)
	}
	pkg, err := s.resolvePackage(ctx, req)
	if err != nil {
		return store.Instance{}, false, err
	}
	if minRAM, ok := img.Requirements["min_ram"].(float64); ok && int64(minRAM) > pkg.MemoryMiB {
		return store.Instance{}, false, errdefs.InvalidArgument("image %s needs at least %d MiB of memory; package %s has %d MiB", img.Name, int64(minRAM), pkg.Name, pkg.MemoryMiB)
	}
	brand, err := brandForImage(img.Type, req.Brand)
	if err != nil {
		return store.Instance{}, false, err
	}
	disks, err := createDisks(img, pkg, brand, req.Disks)
	if err != nil {
		return store.Instance{}, false, err
	}
	id := uuid.NewString()
	name := strings.ReplaceAll(req.Name, "{{shortId}}", id[:8])
	if name == "" {
		name = id[:8]
	}
	if !nameRE.MatchString(name) {
		return store.Instance{}, false, errdefs.InvalidArgument("Invalid machine name %q: use up to 189 letters, digits, '_', '.' or '-', starting with a letter or digit", name)
	}
	nets, err := s.resolveNetworks(ctx, acct, req.Networks)
	if err != nil {
		return store.Instance{}, false, err
	}
	defaultFabric := len(nets) == 0
	if req.PublicNIC {
		pub, err := s.firstPublicNetwork(ctx, acct.ID, nets)
		if err != nil {
			return store.Instance{}, false, err
		}
		if pub != "" {
			nets = append([]string{pub}, nets...)
		}
	}
	rules := append([]scheduler.Rule(nil), req.Rules...)
	if len(req.Affinity) > 0 {
		if req.Locality != nil {
			return store.Instance{}, false, errdefs.InvalidArgument(`cannot specify both "locality" (deprecated) and "affinity"`)
		}
		parsed, err := scheduler.ParseRules(req.Affinity)
		if err != nil {
			return store.Instance{}, false, err
		}
		rules = append(rules, parsed...)
	} else if req.Locality != nil {
		lr, err := scheduler.LocalityToRules(*req.Locality)
		if err != nil {
			return store.Instance{}, false, err
		}
		rules = append(rules, lr...)
	}
	affinity := make([]string, len(rules))
	for i, r := range rules {
		affinity[i] = r.String()
	}
	metadata := map[string]any{}
	for k, v := range req.Metadata {
		if strings.HasSuffix(k, "_pw") || k == "credentials" {
			continue
		}
		metadata[k] = v
	}
	if _, ok := metadata["root_authorized_keys"]; !ok && !req.Docker {
		if len(keys) == 0 {
			return store.Instance{}, false, &errdefs.Error{Code: errdefs.Invalid, Message: "At least one SSH key is required to provision", Reason: "KeyRequired"}
		}
		var b strings.Builder
		for _, k := range keys {
			b.WriteString(k)
			b.WriteString("\n")
		}
		metadata["root_authorized_keys"] = b.String()
	}
	proc := ProcessSpec{}
	if req.Process != nil {
		proc = *req.Process
	}
	proc.PIDsLimit = PIDsLimit(pkg, proc.PIDsLimit)
	if len(req.Volumes) > 0 {
		if brand == driver.BrandBhyve || brand == driver.BrandKVM {
			return store.Instance{}, false, errdefs.InvalidArgument("volumes cannot be mounted in %s virtual machines, only in containers", brand)
		}
		mounts, err := s.ResolveMounts(ctx, c, req.Volumes, VolumeTypeTritonNFS, false)
		if err != nil {
			return store.Instance{}, false, err
		}
		proc.Options.Volumes = append(proc.Options.Volumes, mounts...)
	}
	vcpusMilli := int64(pkg.VCPUs) * 1000
	if req.VCPUs > 0 {
		vcpusMilli = int64(req.VCPUs * 1000)
	}
	desired := "running"
	if req.Start != nil && !*req.Start {
		desired = "stopped"
	}
	tags := req.Tags
	if tags == nil {
		tags = map[string]any{}
	}
	in := store.NewInstance{
		Instance: store.Instance{
			ID: id, OwnerID: c.AccountID, Name: name, Brand: brand, ImageID: img.ID, PackageID: &pkg.ID,
			PackageName: pkg.Name, MemoryMiB: pkg.MemoryMiB, DiskMiB: pkg.DiskMiB, VCPUsMilli: vcpusMilli,
			DesiredState: desired, Docker: req.Docker, Spec: mustJSON(proc), Metadata: metadata, Tags: tags,
			Affinity: affinity, FirewallEnabled: req.FirewallEnabled, DeletionProtection: req.DeletionProtection,
		},
		Networks: nets, DefaultFabric: defaultFabric, Disks: disks, Caller: c.Audit(), IdempotencyKey: req.IdempotencyKey, RequestHash: req.RequestHash,
	}
	sreq := scheduler.Request{InstanceID: id, OwnerID: c.AccountID, Name: name, Brand: brand, MemoryMiB: pkg.MemoryMiB,
		DiskMiB: pkg.DiskMiB, VCPUs: float64(vcpusMilli) / 1000, Rules: rules}
	if req.NodeDriver != "" {
		if sreq.ExcludeNodes, err = s.nodesWithoutDriver(ctx, req.NodeDriver, "this instance"); err != nil {
			return store.Instance{}, false, err
		}
	}
	if len(proc.Options.Volumes) == 0 {
		return s.Placer.Place(ctx, sreq, in)
	}
	// Volumes: placed where their storage lives, and it lives where they
	// are first placed.
	home, volumeIDs, err := s.volumePlacement(ctx, c.AccountID, proc.Options.Volumes)
	if err != nil {
		return store.Instance{}, false, err
	}
	if home != "" {
		sreq.ExcludeNodes = map[string]bool{}
		for _, n := range s.Placer.Snapshot().Nodes() {
			if n.ID != home {
				sreq.ExcludeNodes[n.ID] = true
			}
		}
	}
	inst, replay, err := s.Placer.Place(ctx, sreq, in)
	if err == nil && inst.NodeID != nil {
		if err := s.Store.SetVolumesNode(ctx, c.AccountID, volumeIDs, *inst.NodeID); err != nil {
			s.Log.Warn("record volume home", "instance", inst.ID, "err", err)
		}
	}
	return inst, replay, err
}

func (s *Service) resolvePackage(ctx context.Context, req CreateRequest) (store.Package, error) {
	if req.Package != "" {
		pkg, err := s.Store.GetPackage(ctx, req.Package)
		if err != nil {
			if errdefs.Is(err, errdefs.NotFound) {
				return store.Package{}, errdefs.InvalidArgument("package %s not found", req.Package)
			}
			return store.Package{}, err
		}
		if !pkg.Active {
			return store.Package{}, errdefs.InvalidArgument("package %s is not active", pkg.Name)
		}
		return pkg, nil
	}
	if req.MemoryMiB == 0 && req.VCPUs == 0 && !req.Docker {
		return store.Package{}, &errdefs.Error{Code: errdefs.Invalid, Message: "package must be specified", Reason: "MissingParameter"}
	}
	return s.SmallestPackage(ctx, req.MemoryMiB, req.VCPUs)
}

// SmallestPackage picks the smallest active package with at least memMiB of
// memory and vcpus CPUs (the default package, or the smallest, when both are zero).
func (s *Service) SmallestPackage(ctx context.Context, memMiB int64, vcpus float64) (store.Package, error) {
	pkgs, err := s.Store.ListPackages(ctx)
	if err != nil {
		return store.Package{}, err
	}
	sort.Slice(pkgs, func(i, j int) bool {
		if pkgs[i].MemoryMiB != pkgs[j].MemoryMiB {
			return pkgs[i].MemoryMiB < pkgs[j].MemoryMiB
		}
		return pkgs[i].VCPUs < pkgs[j].VCPUs
	})
	if memMiB == 0 && vcpus == 0 {
		for _, p := range pkgs {
			if p.Default {
				return p, nil
			}
		}
	}
	for _, p := range pkgs {
		if p.MemoryMiB >= memMiB && (vcpus == 0 || float64(p.VCPUs) >= vcpus) {
			return p, nil
		}
	}
	return store.Package{}, errdefs.InvalidArgument("no package offers %d MiB of memory and %g CPUs; the largest has %d MiB", memMiB, vcpus, largest(pkgs))
}

func largest(pkgs []store.Package) int64 {
	var m int64
	for _, p := range pkgs {
		m = max(m, p.MemoryMiB)
	}
	return m
}

func (s *Service) resolveNetworks(ctx context.Context, acct store.Account, wanted []string) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	publics := 0
	for _, w := range wanted {
		n, err := s.Store.GetNetwork(ctx, acct.ID, w)
		if err != nil {
			if errdefs.Is(err, errdefs.NotFound) {
				return nil, &errdefs.Error{Code: errdefs.Invalid, Message: fmt.Sprintf("Invalid Networks: network %s not found", w), Reason: "InvalidArgument"}
			}
			return nil, err
		}
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		if n.Public {
			publics++
		}
		ids = append(ids, n.ID)
	}
	if publics > 1 {
		return nil, errdefs.InvalidArgument("Invalid Networks: only one public network is allowed")
	}
	if len(ids) > 0 {
		return ids, nil
	}
	if acct.DefaultNetwork != nil {
		if n, err := s.Store.GetNetwork(ctx, acct.ID, *acct.DefaultNetwork); err == nil {
			return []string{n.ID}, nil
		}
	}
	// No network asked for and no default yet: the store puts the instance
	// on the account's own default fabric network, made on first use.
	return nil, nil
}

// firstPublicNetwork returns the first public network the account may use,
// or "" when nets already has one.
func (s *Service) firstPublicNetwork(ctx context.Context, ownerID string, nets []string) (string, error) {
	list, err := s.Store.ListNetworks(ctx, ownerID)
	if err != nil {
		return "", err
	}
	first := ""
	for _, n := range list {
		if !n.Public {
			continue
		}
		if slices.Contains(nets, n.ID) {
			return "", nil
		}
		if first == "" {
			first = n.ID
		}
	}
	if first == "" {
		return "", errdefs.InvalidArgument("publishing ports needs a public network and this cloud offers none: ask an operator to create one")
	}
	return first, nil
}
