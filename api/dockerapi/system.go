package dockerapi

import (
	"net/http"
	"runtime"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/go-chi/chi/v5"
)

func (s *Server) systemRoutes(r chi.Router) {
	r.Get("/version", s.handle(s.version))
	r.Get("/info", s.handle(s.info))
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) error {
	v := types.Version{
		Version: EngineVersion, APIVersion: MaxAPIVersion, MinAPIVersion: MinAPIVersion,
		GitCommit: "flotilla", GoVersion: runtime.Version(), Os: "linux", Arch: runtime.GOARCH,
		KernelVersion: "flotilla", BuildTime: time.Unix(0, 0).UTC().Format(time.RFC3339),
	}
	v.Platform.Name = "Flotilla " + s.cfg.Datacenter
	v.Components = []types.ComponentVersion{{Name: "Engine", Version: EngineVersion, Details: map[string]string{
		"ApiVersion": MaxAPIVersion, "MinAPIVersion": MinAPIVersion, "Os": "linux", "Arch": runtime.GOARCH,
		"GitCommit": "flotilla", "GoVersion": runtime.Version(), "KernelVersion": "flotilla", "Experimental": "false",
	}}}
	return writeJSON(w, http.StatusOK, v)
}

// info describes the datacenter as one host: its total capacity (running
// nodes) and the caller's containers and images.
func (s *Server) info(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	list, err := s.listContainers(ctx, c)
	if err != nil {
		return err
	}
	imgs, err := s.listImages(ctx, c)
	if err != nil {
		return err
	}
	nodes, err := s.store.ListNodes(ctx)
	if err != nil {
		return err
	}
	var mem, vcpusMilli int64
	up := 0
	for _, n := range nodes {
		if n.State == "running" && !n.Drained {
			mem += n.MemoryMiB
			vcpusMilli += n.VCPUsMilli
			up++
		}
	}
	info := system.Info{
		ID: "flotilla:" + s.cfg.Datacenter, Name: s.cfg.Datacenter, Images: len(imgs),
		Driver: "flotilla", DriverStatus: [][2]string{{"Account", c.Login}, {"Datacenter", s.cfg.Datacenter},
			{"Compute nodes", itoa(up)}},
		SystemTime: s.now().Format(time.RFC3339Nano), LoggingDriver: "json-file", CgroupDriver: "systemd", CgroupVersion: "2",
		KernelVersion: "flotilla", OperatingSystem: "Flotilla", OSVersion: EngineVersion, OSType: "linux",
		Architecture: runtime.GOARCH, NCPU: int(vcpusMilli / 1000), MemTotal: mem << 20,
		IndexServerAddress: "https://index.docker.io/v1/", ServerVersion: EngineVersion,
		Plugins: system.PluginsInfo{Volume: []string{}, Network: []string{"flotilla"}, Authorization: []string{},
			Log: []string{"json-file"}},
		Runtimes: map[string]system.RuntimeWithStatus{}, GenericResources: []swarm.GenericResource{}, CDISpecDirs: []string{},
		Swarm:           swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive},
		SecurityOptions: []string{"name=seccomp,profile=builtin", "name=no-new-privileges"},
		Labels:          []string{"datacenter=" + s.cfg.Datacenter},
		Warnings:        []string{},
	}
	for _, in := range list {
		info.Containers++
		switch stateOf(in).Status {
		case "running":
			info.ContainersRunning++
		case "paused":
			info.ContainersPaused++
		default:
			info.ContainersStopped++
		}
	}
	return writeJSON(w, http.StatusOK, info)
}
