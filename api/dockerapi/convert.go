package dockerapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/storage"
	"github.com/docker/go-connections/nat"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

// PackageLabel picks a container's package by name or uuid; it is consumed
// at create and shown again (as the package name) in inspect and ps.
const PackageLabel = "com.joyent.package"

// ContainerID is a container's 64-hex id, derived from its instance uuid so
// that every replica computes the same id without storing it: the uuid's 32
// hex digits (so that the scheduler's container==<short id> affinity rules
// match, as with sdc-docker) then 32 of its SHA-256.
func ContainerID(instanceID string) string {
	sum := sha256.Sum256([]byte(instanceID))
	return strings.ReplaceAll(instanceID, "-", "") + hex.EncodeToString(sum[:16])
}

// dockerExtra is what the Docker endpoint keeps in the instance's process
// spec (ProcessSpec.Extra) to answer inspect as the client configured it.
type dockerExtra struct {
	Config     *container.Config     `json:"config,omitempty"`
	HostConfig *container.HostConfig `json:"host_config,omitempty"`
	// ImageRef is the image as the client typed it ("busybox").
	ImageRef string `json:"image_ref,omitempty"`
}

func extraOf(p service.ProcessSpec) dockerExtra {
	var x dockerExtra
	if len(p.Extra) > 0 {
		json.Unmarshal(p.Extra, &x)
	}
	if x.Config == nil {
		x.Config = &container.Config{}
	}
	if x.HostConfig == nil {
		x.HostConfig = &container.HostConfig{}
	}
	return x
}

// dockerState is a container's Docker state derived from the instance's
// desired and observed states.
func stateOf(in store.Instance) container.State {
	st := container.State{StartedAt: zeroTime, FinishedAt: zeroTime, Error: in.Error}
	if in.StartedAt != nil {
		st.StartedAt = in.StartedAt.UTC().Format(time.RFC3339Nano)
	}
	if in.FinishedAt != nil {
		st.FinishedAt = in.FinishedAt.UTC().Format(time.RFC3339Nano)
	}
	if in.ExitCode != nil {
		st.ExitCode = *in.ExitCode
	}
	switch {
	case in.DesiredState == "deleted" || in.State == "deleted":
		st.Status = container.StateRemoving
	case in.State == "running" || in.State == "stopping":
		st.Status = container.StateRunning
		if in.RebootCount != in.ObservedRebootCount {
			st.Status = container.StateRestarting
			st.Restarting = true
		}
	case in.State == "failed" && in.ExitCode != nil:
		// Its command could not be executed (126, 127): dockerd leaves
		// such a container "created", with the exit code and the error.
		st.Status = container.StateCreated
	case in.State == "failed":
		st.Status = container.StateDead
		st.Dead = true
	case in.State == "unknown":
		st.Status = container.StateExited
		if in.DesiredState == "running" && in.StartedAt != nil {
			st.Status = container.StateRunning
		}
	case in.State == "stopped" && in.StartedAt != nil:
		st.Status = container.StateExited
	default: // provisioning, or stopped without ever running
		st.Status = container.StateCreated
	}
	st.Running = st.Status == container.StateRunning || st.Status == container.StateRestarting
	return st
}

const zeroTime = "0001-01-01T00:00:00Z"

// statusText is ps's human Status column.
func statusText(in store.Instance, now time.Time) string {
	st := stateOf(in)
	switch st.Status {
	case container.StateRunning:
		health := healthSuffix(healthOf(in, service.DecodeProcessSpec(in.Spec).Healthcheck, st))
		if in.StartedAt == nil {
			return "Up Less than a second" + health
		}
		return "Up " + humanDuration(now.Sub(*in.StartedAt)) + health
	case container.StateRestarting:
		return "Restarting"
	case container.StateExited:
		if in.FinishedAt == nil {
			return fmt.Sprintf("Exited (%d)", st.ExitCode)
		}
		return fmt.Sprintf("Exited (%d) %s ago", st.ExitCode, humanDuration(now.Sub(*in.FinishedAt)))
	case container.StateDead:
		return "Dead"
	case container.StateRemoving:
		return "Removal In Progress"
	}
	return "Created"
}

// humanDuration renders d the way docker ps does ("5 minutes").
func humanDuration(d time.Duration) string {
	s := int(d.Seconds())
	switch {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	}
	m := int(d.Minutes())
	switch {
	case m == 1:
		return "About a minute"
	case m < 60:
		return fmt.Sprintf("%d minutes", m)
	}
	h := int(d.Round(time.Hour).Hours())
	switch {
	case h == 1:
		return "About an hour"
	case h < 48:
		return fmt.Sprintf("%d hours", h)
	case h < 24*7*2:
		return fmt.Sprintf("%d days", h/24)
	case h < 24*30*2:
		return fmt.Sprintf("%d weeks", h/24/7)
	case h < 24*365*2:
		return fmt.Sprintf("%d months", h/24/30)
	}
	return fmt.Sprintf("%d years", h/24/365)
}

// labelsOf returns a container's labels, with the package shown as
// com.joyent.package.
func labelsOf(in store.Instance, p service.ProcessSpec) map[string]string {
	out := make(map[string]string, len(p.Labels)+1)
	for k, v := range p.Labels {
		out[k] = v
	}
	if in.PackageName != "" {
		out[PackageLabel] = in.PackageName
	}
	return out
}

// publicIP is the address published ports are reachable on: the public NIC
// if there is one, else the primary.
func publicIP(in store.Instance) string {
	ip := ""
	for _, n := range in.NICs {
		if n.Public {
			return n.IP
		}
		if n.Primary || ip == "" {
			ip = n.IP
		}
	}
	return ip
}

// publishedPorts returns the container's published ports (no remapping:
// host port = container port on the instance's own IP) and the exposed-only ones.
func publishedPorts(in store.Instance, x dockerExtra) (nat.PortMap, []container.Port) {
	pm := nat.PortMap{}
	ip := publicIP(in)
	var ports []container.Port
	published := map[nat.Port]bool{}
	for p := range x.HostConfig.PortBindings {
		published[p] = true
	}
	if x.HostConfig.PublishAllPorts {
		for p := range x.Config.ExposedPorts {
			published[p] = true
		}
	}
	seen := map[nat.Port]bool{}
	add := func(p nat.Port) {
		if seen[p] {
			return
		}
		seen[p] = true
		num := uint16(p.Int())
		if published[p] {
			pm[p] = []nat.PortBinding{{HostIP: ip, HostPort: p.Port()}}
			ports = append(ports, container.Port{IP: ip, PrivatePort: num, PublicPort: num, Type: p.Proto()})
		} else {
			pm[p] = nil
			ports = append(ports, container.Port{PrivatePort: num, Type: p.Proto()})
		}
	}
	for p := range x.Config.ExposedPorts {
		add(p)
	}
	for p := range published {
		add(p)
	}
	sort.Slice(ports, func(i, j int) bool {
		if ports[i].PrivatePort != ports[j].PrivatePort {
			return ports[i].PrivatePort < ports[j].PrivatePort
		}
		return ports[i].Type < ports[j].Type
	})
	return pm, ports
}

// endpoints returns the container's networks keyed by name.
func endpoints(in store.Instance) map[string]*network.EndpointSettings {
	out := map[string]*network.EndpointSettings{}
	aliases := service.DecodeProcessSpec(in.Spec).NetworkAliases
	for _, n := range in.NICs {
		// As dockerd: the name, the aliases on this network, the short id.
		names := append(append([]string{in.Name}, aliases[n.NetworkID]...), ContainerID(in.ID)[:12])
		es := &network.EndpointSettings{
			NetworkID: NetworkID(n.NetworkID), EndpointID: endpointID(in.ID, n.MAC), IPAddress: n.IP,
			Aliases: append([]string{}, aliases[n.NetworkID]...), Links: []string{},
			MacAddress: n.MAC, DNSNames: names,
		}
		if n.Gateway != nil {
			es.Gateway = *n.Gateway
		}
		if p, err := netip.ParsePrefix(n.Subnet); err == nil {
			es.IPPrefixLen = p.Bits()
		}
		out[n.NetworkName] = es
	}
	return out
}

// imageInfo is what containers show of their image.
type imageInfo struct {
	ID  string // sha256:...
	Ref string // name:tag
}

// imageLookup finds the Docker id and name of instances' images, once per image.
type imageLookup struct {
	s     *Server
	cache map[string]imageInfo
}

func (s *Server) newImageLookup() *imageLookup {
	return &imageLookup{s: s, cache: map[string]imageInfo{}}
}

func (l *imageLookup) get(ctx context.Context, id string) imageInfo {
	if ii, ok := l.cache[id]; ok {
		return ii
	}
	ii := imageInfo{ID: "sha256:" + ContainerID(id), Ref: id}
	if img, err := l.s.store.ImageByID(ctx, id); err == nil {
		ii = imageInfo{ID: ImageID(img), Ref: imageRef(img)}
	}
	l.cache[id] = ii
	return ii
}

func commandOf(p service.ProcessSpec) string {
	return strings.Join(append(append([]string{}, p.Entrypoint...), p.Cmd...), " ")
}

// summaryOf renders a container for docker ps.
func (s *Server) summaryOf(ctx context.Context, in store.Instance, images *imageLookup) container.Summary {
	p := service.DecodeProcessSpec(in.Spec)
	x := extraOf(p)
	ii := images.get(ctx, in.ImageID)
	ref := x.ImageRef
	if ref == "" {
		ref = ii.Ref
	}
	_, ports := publishedPorts(in, x)
	if ports == nil {
		ports = []container.Port{}
	}
	sum := container.Summary{
		ID: ContainerID(in.ID), Names: []string{"/" + in.Name}, Image: ref, ImageID: ii.ID,
		Command: commandOf(p), Created: in.CreatedAt.Unix(), Ports: ports, Labels: labelsOf(in, p),
		State: stateOf(in).Status, Status: statusText(in, s.now()),
		NetworkSettings: &container.NetworkSettingsSummary{Networks: endpoints(in)}, Mounts: mountsOf(p),
	}
	sum.HostConfig.NetworkMode = networkMode(x)
	return sum
}

func networkMode(x dockerExtra) string {
	if m := string(x.HostConfig.NetworkMode); m != "" {
		return m
	}
	return "default"
}

// inspectOf renders a container for docker inspect.
func (s *Server) inspectOf(ctx context.Context, in store.Instance) container.InspectResponse {
	p := service.DecodeProcessSpec(in.Spec)
	x := extraOf(p)
	ii := s.newImageLookup().get(ctx, in.ImageID)
	st := stateOf(in)
	st.Health = healthOf(in, p.Healthcheck, st)
	id := ContainerID(in.ID)
	cfg := *x.Config
	cfg.Hostname = p.Hostname
	if cfg.Hostname == "" {
		cfg.Hostname = id[:12]
	}
	cfg.User, cfg.WorkingDir, cfg.Env = p.User, p.WorkingDir, p.Env
	cfg.Tty, cfg.OpenStdin, cfg.StdinOnce = p.Tty, p.OpenStdin, p.StdinOnce
	cfg.Cmd, cfg.Entrypoint = p.Cmd, p.Entrypoint
	cfg.Labels = labelsOf(in, p)
	if cfg.Image == "" {
		cfg.Image = ii.Ref
	}
	if cfg.Env == nil {
		cfg.Env = []string{}
	}
	hc := *x.HostConfig
	hc.Memory = in.MemoryMiB << 20
	hc.NanoCPUs = in.VCPUsMilli * 1_000_000
	hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyMode(p.Restart.Name), MaximumRetryCount: p.Restart.MaximumRetryCount}
	if hc.RestartPolicy.Name == "" {
		hc.RestartPolicy.Name = container.RestartPolicyDisabled
	}
	hc.NetworkMode = container.NetworkMode(networkMode(x))
	if hc.CgroupnsMode == "" {
		hc.CgroupnsMode = container.CgroupnsModePrivate
	}
	if hc.MemorySwappiness != nil && *hc.MemorySwappiness < 0 {
		hc.MemorySwappiness = nil
	}
	if hc.LogConfig.Type == "" {
		hc.LogConfig.Type = "json-file"
	}
	pm, _ := publishedPorts(in, x)
	args := []string{}
	path := ""
	if cmd := append(append([]string{}, p.Entrypoint...), p.Cmd...); len(cmd) > 0 {
		path, args = cmd[0], cmd[1:]
	}
	ns := &container.NetworkSettings{Networks: endpoints(in)}
	ns.Ports = pm
	ns.SandboxKey = ""
	for _, n := range in.NICs {
		if n.Primary {
			ns.IPAddress, ns.MacAddress = n.IP, n.MAC
			if n.Gateway != nil {
				ns.Gateway = *n.Gateway
			}
			if pfx, err := netip.ParsePrefix(n.Subnet); err == nil {
				ns.IPPrefixLen = pfx.Bits()
			}
			ns.Bridge = n.Bridge
		}
	}
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID: id, Created: in.CreatedAt.UTC().Format(time.RFC3339Nano), Path: path, Args: args, State: &st,
			Image: ii.ID, Name: "/" + in.Name, RestartCount: in.Restarts, Driver: "flotilla", Platform: "linux",
			HostConfig: &hc, GraphDriver: storageDriver(), ResolvConfPath: "", HostnamePath: "", HostsPath: "", LogPath: "",
			MountLabel: "", ProcessLabel: "", AppArmorProfile: "",
		},
		Mounts: mountsOf(p), Config: &cfg, NetworkSettings: ns,
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// notFoundContainer is dockerd's message for an unknown container.
func notFoundContainer(ref string) error {
	return errdefs.NotFoundf("No such container: %s", ref)
}

func storageDriver() storage.DriverData {
	return storage.DriverData{Name: "flotilla", Data: map[string]string{}}
}

// endpointID is the 64-hex id of a container's interface on a network.
func endpointID(instanceID, mac string) string {
	sum := sha256.Sum256([]byte(instanceID + "/" + mac))
	return hex.EncodeToString(sum[:])
}
