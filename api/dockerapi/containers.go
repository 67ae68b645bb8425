package dockerapi

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/go-chi/chi/v5"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/scheduler"
	"flotilla/store"
)

func (s *Server) containerRoutes(r chi.Router) {
	r.Get("/containers/json", s.handle(s.listContainersHandler))
	r.Post("/containers/create", s.handle(s.createContainer))
	r.Get("/containers/{id}/json", s.handle(s.inspectContainer))
	r.Post("/containers/{id}/start", s.handle(s.startContainer))
	r.Post("/containers/{id}/stop", s.handle(s.stopContainer))
	r.Post("/containers/{id}/restart", s.handle(s.restartContainer))
	r.Post("/containers/{id}/kill", s.handle(s.killContainer))
	r.Post("/containers/{id}/rename", s.handle(s.renameContainer))
	r.Post("/containers/{id}/pause", s.handle(s.unsupported("pause")))
	r.Post("/containers/{id}/unpause", s.handle(s.unsupported("unpause")))
	r.Delete("/containers/{id}", s.handle(s.deleteContainer))
}

func (s *Server) unsupported(what string) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		return errdefs.New(errdefs.NotImplemented, "%s is not supported by this cloud", what)
	}
}

// liveStates are the instance states a container list shows (all but deleted).
var liveStates = []string{"provisioning", "running", "stopping", "stopped", "failed", "unknown"}

// listContainers returns the caller's containers that are not being deleted.
func (s *Server) listContainers(ctx context.Context, c service.Caller) ([]store.Instance, error) {
	docker := true
	list, err := s.store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Docker: &docker, States: liveStates, Limit: 100000})
	if err != nil {
		return nil, err
	}
	out := list[:0]
	for _, in := range list {
		if _, build := in.Tags[service.BuildTag]; build {
			continue // docker build's own containers, removed when their step ends
		}
		if in.DesiredState != "deleted" {
			out = append(out, in)
		}
	}
	return out, nil
}

// resolveContainer finds one of the caller's containers by full id, name
// (with or without a leading "/") or unique id prefix, in dockerd's order.
// Errors: NotFound "No such container: ref", Invalid for an ambiguous prefix.
func (s *Server) resolveContainer(ctx context.Context, c service.Caller, ref string) (store.Instance, error) {
	if ref == "" {
		return store.Instance{}, notFoundContainer(ref)
	}
	list, err := s.listContainers(ctx, c)
	if err != nil {
		return store.Instance{}, err
	}
	return pickContainer(list, ref)
}

func pickContainer(list []store.Instance, ref string) (store.Instance, error) {
	name := strings.TrimPrefix(ref, "/")
	for _, in := range list {
		if ContainerID(in.ID) == ref {
			return in, nil
		}
	}
	for _, in := range list {
		if in.Name == name {
			return in, nil
		}
	}
	var found []store.Instance
	if isLowerHex(ref) {
		for _, in := range list {
			if strings.HasPrefix(ContainerID(in.ID), ref) {
				found = append(found, in)
			}
		}
	}
	switch len(found) {
	case 0:
		return store.Instance{}, notFoundContainer(ref)
	case 1:
		return found[0], nil
	}
	return store.Instance{}, errdefs.InvalidArgument("multiple containers found with provided prefix: %s", ref)
}

// ResolveContainer is resolveContainer for the request's caller.
func (s *Server) ResolveContainer(r *http.Request, ref string) (store.Instance, error) {
	return s.resolveContainer(r.Context(), Caller(r), ref)
}

func isLowerHex(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (s *Server) listContainersHandler(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	q := r.URL.Query()
	all := boolParam(q.Get("all"))
	limit, _ := strconv.Atoi(q.Get("limit"))
	args, err := parseFilters(q.Get("filters"), "status", "label", "name", "id", "ancestor", "network", "exited",
		"before", "since", "health", "publish", "expose", "volume", "isolation", "is-task")
	if err != nil {
		return err
	}
	for _, st := range args.Get("status") {
		if !containerStatuses[st] {
			return errdefs.InvalidArgument("invalid filter 'status=%s'", st)
		}
	}
	for _, h := range args.Get("health") {
		if !healthFilterValues[h] {
			return errdefs.InvalidArgument("Unrecognised filter value for health: %s", h)
		}
	}
	for _, e := range args.Get("exited") {
		if _, err := strconv.Atoi(e); err != nil {
			return errdefs.InvalidArgument("invalid filter 'exited=%s'", e)
		}
	}
	if args.Contains("status") || limit > 0 {
		all = true
	}
	list, err := s.listContainers(ctx, c)
	if err != nil {
		return err
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].CreatedAt.After(list[j].CreatedAt) })
	var before, since *time.Time
	if v := args.Get("before"); len(v) > 0 {
		in, err := pickContainer(list, v[0])
		if err != nil {
			return err
		}
		before = &in.CreatedAt
	}
	if v := args.Get("since"); len(v) > 0 {
		in, err := pickContainer(list, v[0])
		if err != nil {
			return err
		}
		since = &in.CreatedAt
	}
	ancestors := map[string]bool{}
	for _, a := range args.Get("ancestor") {
		if img, err := s.resolveImage(ctx, c, a); err == nil {
			ancestors[img.ID] = true
		}
	}
	images := s.newImageLookup()
	out := []container.Summary{}
	for _, in := range list {
		if before != nil && !in.CreatedAt.Before(*before) || since != nil && !in.CreatedAt.After(*since) {
			continue
		}
		sum := s.summaryOf(ctx, in, images)
		if !all && sum.State != container.StateRunning && sum.State != container.StateRestarting {
			continue
		}
		if !matchContainer(args, in, sum, ancestors) {
			continue
		}
		out = append(out, sum)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// matchContainer applies the filters of docker ps.
func matchContainer(args filters.Args, in store.Instance, sum container.Summary, ancestors map[string]bool) bool {
	if !matchAny(args, "status", func(v string) bool { return v == sum.State }) {
		return false
	}
	if !matchLabels(args, "label", sum.Labels) {
		return false
	}
	if !matchAny(args, "name", func(v string) bool { return matchRegexp(v, in.Name) || matchRegexp(v, "/"+in.Name) }) {
		return false
	}
	if !matchAny(args, "id", func(v string) bool { return strings.HasPrefix(sum.ID, v) || matchRegexp(v, sum.ID) }) {
		return false
	}
	if !matchAny(args, "ancestor", func(string) bool { return ancestors[in.ImageID] }) {
		return false
	}
	if !matchAny(args, "network", func(v string) bool {
		for _, n := range in.NICs {
			if n.NetworkName == v || n.NetworkID == v || strings.HasPrefix(NetworkID(n.NetworkID), v) {
				return true
			}
		}
		return false
	}) {
		return false
	}
	if !matchAny(args, "exited", func(v string) bool {
		code, _ := strconv.Atoi(v)
		return sum.State == container.StateExited && in.ExitCode != nil && *in.ExitCode == code
	}) {
		return false
	}
	if !matchAny(args, "health", func(v string) bool { return v == healthStatusOf(in) }) {
		return false
	}
	if !matchAny(args, "publish", func(v string) bool { return hasPort(sum.Ports, v, true) }) ||
		!matchAny(args, "expose", func(v string) bool { return hasPort(sum.Ports, v, false) }) {
		return false
	}
	if args.Contains("volume") || args.Contains("is-task") && !matchAny(args, "is-task", func(v string) bool { return v == "false" }) {
		return false
	}
	return true
}

func hasPort(ports []container.Port, v string, published bool) bool {
	port, proto := nat.SplitProtoPort(v)
	for _, p := range ports {
		if published && p.PublicPort == 0 {
			continue
		}
		if strconv.Itoa(int(p.PrivatePort)) == port && (proto == "" || proto == p.Type) {
			return true
		}
	}
	return false
}

func boolParam(v string) bool {
	b, err := strconv.ParseBool(v)
	return err == nil && b
}

func (s *Server) inspectContainer(w http.ResponseWriter, r *http.Request) error {
	in, err := s.resolveContainer(r.Context(), Caller(r), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, s.inspectOf(r.Context(), in))
}

var validName = regexp.MustCompile(`^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// createContainer records a container (an instance with desired state
// stopped, placed now) from a container.CreateRequest. A missing image is
// the only 404: the CLI answers any 404 here by pulling.
func (s *Server) createContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	var req container.CreateRequest
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	if req.Config == nil {
		return errdefs.InvalidArgument("config cannot be empty in order to create a container")
	}
	name := r.URL.Query().Get("name")
	if name != "" && !validName.MatchString(name) {
		return errdefs.InvalidArgument("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", name)
	}
	name = strings.TrimPrefix(name, "/")
	cr, warnings, err := s.createRequest(ctx, c, name, r.URL.Query().Get("platform"), req)
	if err != nil {
		return err
	}
	var in store.Instance
	for attempt := 0; ; attempt++ {
		if name == "" {
			cr.Name = randomName(attempt > 0)
		}
		in, _, err = s.Service.CreateInstance(ctx, c, cr)
		if err == nil || !errdefs.Is(err, errdefs.Conflict) || name != "" || attempt >= 3 {
			break
		}
	}
	if err != nil {
		if errdefs.Is(err, errdefs.Conflict) && name != "" {
			return s.nameConflict(ctx, c, name, "")
		}
		return err
	}
	return writeJSON(w, http.StatusCreated, container.CreateResponse{ID: ContainerID(in.ID), Warnings: warnings})
}

// nameConflict is dockerd's message for a name in use.
func (s *Server) nameConflict(ctx context.Context, c service.Caller, name, prefix string) error {
	holder := "another instance"
	if list, err := s.store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Name: name, Deleted: true, Limit: 1}); err == nil && len(list) > 0 {
		holder = ContainerID(list[0].ID)
	}
	return errdefs.Conflictf("%sConflict. The container name \"/%s\" is already in use by container \"%s\". You have to remove (or rename) that container to be able to reuse that name.", prefix, name, holder)
}

const mib = 1 << 20

// createRequest turns a Docker create into the service's request: image
// defaults merged in, affinity rules and the package label consumed,
// published ports checked (no remapping: each container has its own IP).
func (s *Server) createRequest(ctx context.Context, c service.Caller, name, platform string, req container.CreateRequest) (service.CreateRequest, []string, error) {
	cfg := *req.Config
	hc := container.HostConfig{}
	if req.HostConfig != nil {
		hc = *req.HostConfig
	}
	warnings := []string{}
	if cfg.Image == "" {
		return service.CreateRequest{}, nil, errdefs.InvalidArgument("an image is required to create a container")
	}
	mounts, err := dockerMounts(cfg, hc)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	if hc.Privileged {
		return service.CreateRequest{}, nil, errdefs.InvalidArgument("privileged containers are not supported by this cloud")
	}
	if err := checkPortBindings(hc.PortBindings); err != nil {
		return service.CreateRequest{}, nil, err
	}
	if _, err := healthcheckSpec(cfg.Healthcheck); err != nil {
		return service.CreateRequest{}, nil, err
	}
	opts, err := runOptions(hc, req.NetworkingConfig, platform)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	nets, err := s.networksFor(ctx, c, hc.NetworkMode, req.NetworkingConfig)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	dnsCfg, err := dnsSettings(hc)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	aliases, err := s.networkAliases(ctx, c, req.NetworkingConfig)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	restart, err := restartPolicy(hc.RestartPolicy)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	if hc.AutoRemove && restart.Name != "" && restart.Name != "no" {
		return service.CreateRequest{}, nil, errdefs.InvalidArgument("can't create 'AutoRemove' container with restart policy")
	}
	img, err := s.resolveImage(ctx, c, cfg.Image)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	if len(mounts) > 0 {
		// Last of the checks: this creates the volumes `-v` names.
		if opts.Volumes, err = s.Service.ResolveMounts(ctx, c, mounts, service.VolumeTypeLocal, true); err != nil {
			return service.CreateRequest{}, nil, err
		}
	}
	rules, err := scheduler.ParseDockerAffinities(cfg.Env, cfg.Labels)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	labels := map[string]string{}
	tags := map[string]any{"sdc_docker": true}
	pkg := ""
	for k, v := range cfg.Labels {
		if k == PackageLabel {
			pkg = v
			continue
		}
		labels[k] = v
		tags["docker:label:"+k] = v
	}
	var env []string
	for _, e := range cfg.Env {
		if !strings.HasPrefix(e, "affinity:") {
			env = append(env, e)
		}
	}
	ic := imageConfigOf(img)
	entrypoint, cmd := []string(cfg.Entrypoint), []string(cfg.Cmd)
	if cfg.Entrypoint == nil {
		entrypoint = ic.Entrypoint
		if len(cmd) == 0 {
			cmd = ic.Cmd
		}
	}
	if len(entrypoint) == 0 && len(cmd) == 0 {
		return service.CreateRequest{}, nil, errdefs.InvalidArgument("No command specified")
	}
	env = mergeEnv(ic.Env, env)
	if cfg.WorkingDir == "" {
		cfg.WorkingDir = ic.WorkingDir
	}
	if cfg.User == "" {
		cfg.User = ic.User
	}
	cfg.Healthcheck = mergeHealthcheck(cfg.Healthcheck, ic.Healthcheck)
	health, err := healthcheckSpec(cfg.Healthcheck)
	if err != nil {
		return service.CreateRequest{}, nil, err
	}
	exposed := nat.PortSet{}
	for p := range ic.ExposedPorts {
		if port, err := nat.NewPort(nat.SplitProtoPort(p)); err == nil {
			exposed[port] = struct{}{}
		}
	}
	for p := range cfg.ExposedPorts {
		exposed[p] = struct{}{}
	}
	for p := range hc.PortBindings {
		exposed[p] = struct{}{}
	}
	cfg.ExposedPorts = exposed
	published := publishedSpec(hc, exposed)
	cfg.Env, cfg.Labels, cfg.Entrypoint, cfg.Cmd = env, labels, entrypoint, cmd
	if hc.NanoCPUs < 0 || hc.Memory < 0 {
		return service.CreateRequest{}, nil, errdefs.InvalidArgument("memory and CPUs cannot be negative")
	}
	stopSignal, err := parseSignal(cfg.StopSignal, 0)
	if err != nil {
		return service.CreateRequest{}, nil, errdefs.InvalidArgument("invalid --stop-signal %q: use a signal name (TERM, SIGUSR1) or number", cfg.StopSignal)
	}
	memMiB := (hc.Memory + mib - 1) / mib
	extra, _ := json.Marshal(dockerExtra{Config: &cfg, HostConfig: &hc, ImageRef: cfg.Image})
	start := false
	return service.CreateRequest{
		Name: name, Image: img.ID, Package: pkg, MemoryMiB: memMiB, VCPUs: float64(hc.NanoCPUs) / 1e9,
		Networks: nets, Rules: rules, Docker: true, Tags: tags, Start: &start, FirewallEnabled: len(published) > 0,
		PublicNIC: len(hc.PortBindings) > 0 || hc.PublishAllPorts,
		Process: &service.ProcessSpec{
			Entrypoint: entrypoint, Cmd: cmd, Env: env, WorkingDir: cfg.WorkingDir, User: cfg.User,
			Hostname: cfg.Hostname, Tty: cfg.Tty, OpenStdin: cfg.OpenStdin, StdinOnce: cfg.StdinOnce,
			Labels: labels, Restart: restart, Extra: extra, StopSignal: stopSignal, StopTimeout: cfg.StopTimeout,
			Options: opts, DNS: dnsCfg, NetworkAliases: aliases, PIDsLimit: pidsLimit(hc.PidsLimit), Published: published,
			Healthcheck: health,
		},
	}, warnings, nil
}

// pidsLimit is the limit --pids-limit asked for; 0 (the package's) when
// unset or unlimited (0 or -1), which the package then bounds.
func pidsLimit(p *int64) int64 {
	if p == nil || *p < 0 {
		return 0
	}
	return *p
}

// publishedSpec lists the ports -p (or -P, all exposed ports) publishes.
// A container that publishes ports gets its firewall on, so that from
// outside its account only those ports reach it (sdc-docker's model); its
// account's instances still reach every port.
func publishedSpec(hc container.HostConfig, exposed nat.PortSet) []service.PublishedPort {
	seen := map[nat.Port]bool{}
	for p := range hc.PortBindings {
		seen[p] = true
	}
	if hc.PublishAllPorts {
		for p := range exposed {
			seen[p] = true
		}
	}
	var out []service.PublishedPort
	for p := range seen {
		if n := p.Int(); n > 0 && (p.Proto() == "tcp" || p.Proto() == "udp") {
			out = append(out, service.PublishedPort{Port: n, Protocol: p.Proto()})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Port < out[j].Port || out[i].Port == out[j].Port && out[i].Protocol < out[j].Protocol
	})
	return out
}

// checkPortBindings refuses remapped ports: a container publishes its own
// port on its own IP.
func checkPortBindings(pm nat.PortMap) error {
	for p, bindings := range pm {
		for _, b := range bindings {
			if b.HostPort != "" && b.HostPort != p.Port() {
				return errdefs.InvalidArgument("publish port: remapping of port numbers is not allowed (%s to %s): every container has its own IP address, so publish -p %s (or -p %s:%s; in a compose file, ports: [\"%s\"])", b.HostPort, p, p.Port(), p.Port(), p.Port(), p.Port())
			}
			if b.HostIP != "" && b.HostIP != "0.0.0.0" && b.HostIP != "::" {
				return errdefs.InvalidArgument("publish port: binding to host address %s is not supported: ports are published on the container's own IP address", b.HostIP)
			}
		}
	}
	return nil
}

func restartPolicy(p container.RestartPolicy) (driver.RestartPolicy, error) {
	switch p.Name {
	case "", container.RestartPolicyDisabled, container.RestartPolicyAlways, container.RestartPolicyUnlessStopped:
		if p.MaximumRetryCount != 0 {
			return driver.RestartPolicy{}, errdefs.InvalidArgument("invalid restart policy: maximum retry count can only be used with 'on-failure'")
		}
	case container.RestartPolicyOnFailure:
		if p.MaximumRetryCount < 0 {
			return driver.RestartPolicy{}, errdefs.InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
		}
	default:
		return driver.RestartPolicy{}, errdefs.InvalidArgument("invalid restart policy: unknown policy '%s'; use one of 'no', 'always', 'on-failure' or 'unless-stopped'", p.Name)
	}
	return driver.RestartPolicy{Name: string(p.Name), MaximumRetryCount: p.MaximumRetryCount}, nil
}

// networksFor maps --network (NetworkMode) and NetworkingConfig to network
// ids. Problems are 400, never 404 (a 404 makes the CLI pull the image).
func (s *Server) networksFor(ctx context.Context, c service.Caller, mode container.NetworkMode, nc *network.NetworkingConfig) ([]string, error) {
	var refs []string
	switch m := string(mode); {
	case m == "" || m == "default" || m == "bridge":
	case m == "host" || m == "none" || strings.HasPrefix(m, "container:"):
		return nil, errdefs.InvalidArgument("network mode %q is not supported: every container has its own network interface", m)
	default:
		refs = append(refs, m)
	}
	if nc != nil {
		keys := make([]string, 0, len(nc.EndpointsConfig))
		for k := range nc.EndpointsConfig {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k != "bridge" && k != "default" && !slices.Contains(refs, k) {
				refs = append(refs, k)
			}
		}
	}
	ids := make([]string, 0, len(refs))
	for _, ref := range refs {
		n, err := s.resolveNetwork(ctx, c, ref)
		if err != nil {
			return nil, errdefs.InvalidArgument("network %s not found", ref)
		}
		ids = append(ids, n.ID)
	}
	return ids, nil
}

// mergeEnv overlays user entries on the image's, by variable name.
func mergeEnv(base, over []string) []string {
	out := append([]string{}, base...)
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		replaced := false
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i], replaced = e, true
				break
			}
		}
		if !replaced {
			out = append(out, e)
		}
	}
	return out
}

var (
	adjectives = []string{"brave", "calm", "eager", "fervent", "gentle", "happy", "jolly", "keen", "lucid", "merry",
		"nifty", "quirky", "serene", "sharp", "tender", "vibrant", "wizardly", "zealous", "bold", "clever"}
	surnames = []string{"hopper", "lovelace", "turing", "curie", "noether", "ritchie", "thompson", "pike", "liskov",
		"hamilton", "knuth", "dijkstra", "babbage", "goldberg", "kay", "shannon", "wozniak", "torvalds", "cerf", "allen"}
)

// randomName returns a dockerd-style "adjective_surname" name; retry adds a
// digit, as dockerd does after a collision.
func randomName(retry bool) string {
	n := adjectives[rand.IntN(len(adjectives))] + "_" + surnames[rand.IntN(len(surnames))]
	if retry {
		n += strconv.Itoa(rand.IntN(10))
	}
	return n
}

// converge waits until the node reports what the last change asked for
// (done) or the timeout passes; a timeout is not an error, the desired state
// is recorded and the node will get there.
func (s *Server) converge(ctx context.Context, c service.Caller, id string, timeout time.Duration, done func(store.Instance) bool) (store.Instance, error) {
	deadline := time.Now().Add(timeout)
	for {
		// Register before reading, so a report between the two still wakes us.
		changed, cancel := s.Service.InstanceChanged(id)
		in, err := s.store.GetInstance(ctx, c.AccountID, id)
		if err != nil {
			cancel()
			return store.Instance{}, err
		}
		if done(in) || in.State == "failed" || in.State == "deleted" {
			cancel()
			return in, nil
		}
		if time.Now().After(deadline) {
			cancel()
			s.log.Warn("container did not reach the requested state in time", "instance", id, "state", in.State, "desired", in.DesiredState)
			return in, nil
		}
		select {
		case <-ctx.Done():
			cancel()
			return in, ctx.Err()
		case <-changed:
		case <-time.After(250 * time.Millisecond): // in case a notification was lost
		}
		cancel()
	}
}

func observed(in store.Instance) bool { return in.ObservedGeneration >= in.Generation }

// awaitRemoved waits (each at most ConvergeTimeout) until instances whose
// removal is recorded are gone, and reports whether it waited. A docker rm
// answers once the removal is recorded, while what the container held (its
// NICs, its use of an image) is let go when its node reports it removed;
// a network or image rm right after must not find it. When one of ins is
// not being removed, the object stays in use: nothing is waited for.
func (s *Server) awaitRemoved(ctx context.Context, c service.Caller, ins []store.Instance) bool {
	for _, in := range ins {
		if in.DesiredState != "deleted" {
			return false
		}
	}
	for _, in := range ins {
		if in.NodeID == nil {
			continue
		}
		if _, err := s.converge(ctx, c, in.ID, s.cfg.ConvergeTimeout, func(store.Instance) bool { return false }); err != nil {
			return false
		}
	}
	return len(ins) > 0
}

func (s *Server) startContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ref := chi.URLParam(r, "id")
	in, err := s.resolveContainer(r.Context(), c, ref)
	if err != nil {
		return err
	}
	if stateOf(in).Running && in.DesiredState == "running" {
		return errNotModified
	}
	in, err = s.Service.Start(r.Context(), c, in.ID)
	if err != nil {
		return err
	}
	in, err = s.converge(r.Context(), c, in.ID, s.cfg.ConvergeTimeout, func(in store.Instance) bool {
		// A short-lived command may be done before the node reports it
		// running: "stopped" once the start was applied means it ran.
		return observed(in) && (in.State == "running" || in.State == "stopped" && in.StartedAt != nil)
	})
	if err != nil {
		return err
	}
	if in.State == "failed" {
		return startFailure(in)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// startFailure is the error of a start the node could not make. A command
// that cannot be executed is the client's mistake (400) with runc's words,
// from which the CLI derives exit code 127 or 126 as with dockerd.
func startFailure(in store.Instance) error {
	msg := in.Error
	if msg == "" {
		msg = "the node could not start it"
	}
	if in.ExitCode != nil && (*in.ExitCode == 126 || *in.ExitCode == 127) {
		return errdefs.InvalidArgument("%s", msg)
	}
	return errdefs.New(errdefs.Unavailable, "failed to start container %s: %s", ContainerID(in.ID), msg)
}

// stopTimeout is the grace a stop gives: ?t= (docker stop -t), else the
// container's --stop-timeout, else dockerd's 10 s. Negative waits for ever.
func stopTimeout(r *http.Request, p service.ProcessSpec) (time.Duration, error) {
	v := r.URL.Query().Get("t")
	t := 10
	if v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, errdefs.InvalidArgument("invalid stop timeout %q: give whole seconds", v)
		}
		t = n
	} else if p.StopTimeout != nil {
		t = *p.StopTimeout
	}
	if t < 0 {
		return 24 * time.Hour, nil
	}
	return time.Duration(t) * time.Second, nil
}

// stop stops a container with signal sig (0: its stop signal) and the
// request's grace: on the node first, so that the grace and signal are the
// client's, then as the desired state, waiting for the node's report.
func (s *Server) stop(r *http.Request, in store.Instance, sig int) error {
	c := Caller(r)
	grace, err := stopTimeout(r, service.DecodeProcessSpec(in.Spec))
	if err != nil {
		return err
	}
	if stateOf(in).Running {
		if node, err := s.nodeOf(r.Context(), in); err == nil && node.Address != "" {
			// Whatever the node says (it cannot signal, it is unreachable),
			// the desired state below is recorded and the node applies it.
			if err := nodes.Stop(r.Context(), node, in.ID, sig, grace); err != nil && r.Context().Err() == nil &&
				!errdefs.Is(err, errdefs.NotImplemented) && !errdefs.Is(err, errdefs.Conflict) {
				s.log.Warn("stop on the node failed; recording the desired state only", "instance", in.ID, "err", err)
			}
		}
	}
	in, err = s.Service.Stop(r.Context(), c, in.ID)
	if err != nil {
		return err
	}
	_, err = s.converge(r.Context(), c, in.ID, grace+s.cfg.ConvergeTimeout, func(in store.Instance) bool {
		return observed(in) && in.State == "stopped"
	})
	return err
}

func (s *Server) stopContainer(w http.ResponseWriter, r *http.Request) error {
	in, err := s.resolveContainer(r.Context(), Caller(r), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	if !stateOf(in).Running && in.DesiredState != "running" {
		return errNotModified
	}
	sig, err := parseSignal(r.URL.Query().Get("signal"), 0)
	if err != nil {
		return err
	}
	if err := s.stop(r, in, sig); err != nil {
		return err
	}
	s.recordEvent(r.Context(), Caller(r), in, "stop", nil)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) restartContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	in, err := s.resolveContainer(r.Context(), c, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	grace, err := stopTimeout(r, service.DecodeProcessSpec(in.Spec))
	if err != nil {
		return err
	}
	if !stateOf(in).Running {
		if in, err = s.Service.Start(r.Context(), c, in.ID); err != nil {
			return err
		}
	} else {
		if node, err := s.nodeOf(r.Context(), in); err == nil && node.Address != "" && r.URL.Query().Get("t") != "" {
			// The client's grace, not the node's default, for the stop half.
			nodes.Stop(r.Context(), node, in.ID, 0, grace)
		}
		if in, err = s.Service.Reboot(r.Context(), c, in.ID); err != nil {
			return err
		}
	}
	if _, err := s.converge(r.Context(), c, in.ID, grace+s.cfg.ConvergeTimeout, func(in store.Instance) bool {
		return observed(in) && in.State == "running" && in.ObservedRebootCount >= in.RebootCount
	}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// killContainer delivers a signal (default KILL) to the container's main
// process, as dockerd does. KILL also records the container as stopped, so
// that its restart policy leaves it so; other signals are only delivered:
// the process decides what to do (an exit is reported like any other).
func (s *Server) killContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ref := chi.URLParam(r, "id")
	in, err := s.resolveContainer(r.Context(), c, ref)
	if err != nil {
		return err
	}
	sig, err := parseSignal(r.URL.Query().Get("signal"), sigKILL)
	if err != nil {
		return err
	}
	if !stateOf(in).Running {
		return errdefs.Conflictf("Cannot kill container: %s: Container %s is not running", ref, ContainerID(in.ID))
	}
	kills := sig == sigKILL
	node, err := s.nodeOf(r.Context(), in)
	if err == nil {
		err = nodes.Kill(r.Context(), node, in.ID, sig, kills)
	}
	switch {
	case errdefs.Is(err, errdefs.NotImplemented) || errdefs.Is(err, errdefs.Unavailable) && kills:
		// A node that cannot signal (or cannot be reached) can still be
		// told to stop.
		if !kills && sig != sigTERM {
			return errdefs.New(errdefs.NotImplemented, "the node of container %s cannot deliver signal %s: only KILL and TERM (which stop it)", ref, r.URL.Query().Get("signal"))
		}
		kills = true
	case errdefs.Is(err, errdefs.Conflict):
		return errdefs.Conflictf("Cannot kill container: %s: Container %s is not running", ref, ContainerID(in.ID))
	case err != nil:
		return err
	}
	s.recordEvent(r.Context(), c, in, "kill", map[string]string{"signal": strconv.Itoa(sig)})
	if kills {
		in, err := s.Service.Stop(r.Context(), c, in.ID)
		if err != nil {
			return err
		}
		if _, err := s.converge(r.Context(), c, in.ID, s.cfg.ConvergeTimeout, func(in store.Instance) bool {
			return observed(in) && in.State == "stopped"
		}); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) renameContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	in, err := s.resolveContainer(r.Context(), c, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	name := r.URL.Query().Get("name")
	if !validName.MatchString(name) {
		return errdefs.InvalidArgument("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", name)
	}
	name = strings.TrimPrefix(name, "/")
	if name == in.Name {
		return errdefs.InvalidArgument("Renaming a container with the same name as its current name")
	}
	if _, err := s.Service.Rename(r.Context(), c, in.ID, name); err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			return s.nameConflict(r.Context(), c, name, "Error when allocating new name: ")
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) deleteContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ref := chi.URLParam(r, "id")
	in, err := s.resolveContainer(r.Context(), c, ref)
	if err != nil {
		return err
	}
	if stateOf(in).Running && !boolParam(r.URL.Query().Get("force")) {
		return errdefs.Conflictf("cannot remove container \"/%s\": container is running: stop the container before removing or force remove", in.Name)
	}
	if _, err := s.Service.Delete(r.Context(), c, in.ID); err != nil {
		if errdefs.Is(err, errdefs.Gone) {
			return notFoundContainer(ref)
		}
		return err
	}
	if boolParam(r.URL.Query().Get("v")) {
		s.removeAnonymousVolumes(r.Context(), c, in)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
