package dockerapi

import (
	"context"
	"net/http"
	"runtime"
	"sort"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/api/types/volume"
	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) systemRoutes(r chi.Router) {
	r.Get("/version", s.handle(s.version))
	r.Get("/info", s.handle(s.info))
	r.Get("/system/df", s.handle(s.diskUsage))
	r.Post("/containers/prune", s.handle(s.pruneContainers))
	r.Post("/images/prune", s.handle(s.pruneImages))
	r.Post("/networks/prune", s.handle(s.pruneNetworks))
	r.Post("/volumes/prune", s.handle(s.pruneVolumes))
	r.Post("/build/prune", s.handle(s.pruneBuildCache))
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
	cgVersion, cgDriver := nodeCgroups(nodes)
	info := system.Info{
		ID: "flotilla:" + s.cfg.Datacenter, Name: s.cfg.Datacenter, Images: len(imgs),
		Driver: "flotilla", DriverStatus: [][2]string{{"Account", c.Login}, {"Datacenter", s.cfg.Datacenter},
			{"Compute nodes", itoa(up)}},
		SystemTime: s.now().Format(time.RFC3339Nano), LoggingDriver: "json-file", CgroupDriver: cgDriver, CgroupVersion: cgVersion,
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

// diskUsage is `docker system df`: the caller's images (with how many of
// its containers use each), containers and volumes. Containers write to
// their node's disk, which the control plane does not measure: their sizes
// are 0. Shared images count, but only the caller's own are reclaimable.
func (s *Server) diskUsage(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	set, err := s.images(ctx, c)
	if err != nil {
		return err
	}
	list, err := s.listContainers(ctx, c)
	if err != nil {
		return err
	}
	uses := map[string]int64{}
	for _, in := range list {
		uses[in.ImageID]++
	}
	du := types.DiskUsage{Images: []*image.Summary{}, Containers: []*container.Summary{},
		Volumes: []*volume.Volume{}, BuildCache: []*build.CacheRecord{}}
	for _, img := range set.list {
		labels := imageConfigOf(img).Labels
		if labels == nil {
			labels = map[string]string{}
		}
		size := imageSize(img)
		du.LayersSize += size
		du.Images = append(du.Images, &image.Summary{ID: ImageID(img), RepoTags: set.repoTags(img),
			RepoDigests: set.repoDigests(img), Created: publishedAt(img).Unix(), Size: size, Labels: labels,
			Containers: uses[img.ID], SharedSize: 0})
	}
	sort.SliceStable(du.Images, func(i, j int) bool { return du.Images[i].Created > du.Images[j].Created })
	images := s.newImageLookup()
	for _, in := range list {
		sum := s.summaryOf(ctx, in, images)
		du.Containers = append(du.Containers, &sum)
	}
	if vols, err := s.volumeUsage(ctx, c); err == nil {
		du.Volumes = vols
	} else {
		return err
	}
	return writeJSON(w, http.StatusOK, du)
}

// volumeUsage lists the caller's volumes for system df.
func (s *Server) volumeUsage(ctx context.Context, c service.Caller) ([]*volume.Volume, error) {
	return s.ownVolumes(ctx, c)
}

// pruneFilters reads a prune's filters: label (and label!) and until,
// plus the extra keys allowed.
func pruneFilters(r *http.Request, extra ...string) (filters.Args, *time.Time, error) {
	args, err := parseFilters(r.URL.Query().Get("filters"), append([]string{"label", "label!", "until"}, extra...)...)
	if err != nil {
		return args, nil, err
	}
	var until *time.Time
	if v := args.Get("until"); len(v) > 0 {
		t, err := parseUntil(v[0], time.Now())
		if err != nil {
			return args, nil, err
		}
		until = &t
	}
	return args, until, nil
}

// parseUntil reads a prune's until: Unix seconds, RFC 3339 or a duration
// before now ("24h").
func parseUntil(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return now.Add(-d), nil
	}
	if t, err := parseDockerTime(v); err == nil {
		return t, nil
	}
	return time.Time{}, errdefs.InvalidArgument("invalid until filter %q: give a duration (24h), Unix seconds or RFC 3339", v)
}

// labelsPrunable applies label and label! filters.
func labelsPrunable(args filters.Args, labels map[string]string) bool {
	if !matchLabels(args, "label", labels) {
		return false
	}
	for _, l := range args.Get("label!") {
		if matchLabels(filters.NewArgs(filters.Arg("label", l)), "label", labels) {
			return false
		}
	}
	return true
}

// pruneContainers is `docker container prune`: it removes the caller's
// containers that are not running.
func (s *Server) pruneContainers(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	args, until, err := pruneFilters(r)
	if err != nil {
		return err
	}
	list, err := s.listContainers(ctx, c)
	if err != nil {
		return err
	}
	rep := container.PruneReport{ContainersDeleted: []string{}}
	for _, in := range list {
		st := stateOf(in)
		if st.Running || st.Status == container.StateRemoving || in.DesiredState == "running" && in.State != "stopped" && in.State != "failed" {
			continue
		}
		if until != nil && !in.CreatedAt.Before(*until) || !labelsPrunable(args, labelsOf(in, service.DecodeProcessSpec(in.Spec))) {
			continue
		}
		if _, err := s.Service.Delete(ctx, c, in.ID); err != nil {
			if errdefs.Is(err, errdefs.Gone) || errdefs.Is(err, errdefs.NotFound) {
				continue
			}
			return err
		}
		rep.ContainersDeleted = append(rep.ContainersDeleted, ContainerID(in.ID))
	}
	return writeJSON(w, http.StatusOK, rep)
}

// pruneImages is `docker image prune`: it removes the caller's own images
// that no container uses and that have no tag (dangling), or with
// dangling=false (-a) whatever their tags. Shared images are never pruned.
func (s *Server) pruneImages(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	args, until, err := pruneFilters(r, "dangling")
	if err != nil {
		return err
	}
	dangling, danglingSet, err := boolFilter(args, "dangling")
	if err != nil {
		return err
	}
	onlyDangling := !danglingSet || dangling
	set, err := s.images(ctx, c)
	if err != nil {
		return err
	}
	all, err := s.store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Limit: 100000})
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, in := range all {
		if in.State != "deleted" {
			used[in.ImageID] = true
		}
	}
	rep := image.PruneReport{ImagesDeleted: []image.DeleteResponse{}}
	for _, img := range set.list {
		tags := set.tags[img.ID]
		if !set.ownDocker(img) || used[img.ID] || onlyDangling && len(tags) > 0 {
			continue
		}
		if until != nil && !img.CreatedAt.Before(*until) || !labelsPrunable(args, imageConfigOf(img).Labels) {
			continue
		}
		for _, t := range tags {
			if _, err := s.Service.Untag(ctx, c.AccountID, t); err != nil && !errdefs.Is(err, errdefs.NotFound) {
				return err
			}
			rep.ImagesDeleted = append(rep.ImagesDeleted, image.DeleteResponse{Untagged: t})
			s.recordObjectEvent(ctx, c, img.ID, events.ImageEventType, events.ActionUnTag, ImageID(img), map[string]string{"name": t})
		}
		if err := s.store.DeleteImage(ctx, c.AccountID, img.ID); err != nil {
			if errdefs.Is(err, errdefs.NotFound) || errdefs.Is(err, errdefs.Conflict) {
				continue
			}
			return err
		}
		rep.ImagesDeleted = append(rep.ImagesDeleted, image.DeleteResponse{Deleted: ImageID(img)})
		rep.SpaceReclaimed += uint64(imageSize(img))
		s.recordObjectEvent(ctx, c, img.ID, events.ImageEventType, events.ActionDelete, ImageID(img), map[string]string{"name": ImageID(img)})
	}
	return writeJSON(w, http.StatusOK, rep)
}

// pruneNetworks is `docker network prune`: it removes the caller's own
// networks that no container is on. Pre-defined networks stay.
func (s *Server) pruneNetworks(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	args, until, err := pruneFilters(r)
	if err != nil {
		return err
	}
	list, err := s.store.ListNetworks(ctx, c.AccountID)
	if err != nil {
		return err
	}
	rep := network.PruneReport{NetworksDeleted: []string{}}
	for _, n := range list {
		if n.OwnerID == nil || *n.OwnerID != c.AccountID {
			continue
		}
		if until != nil && !n.CreatedAt.Before(*until) || !labelsPrunable(args, map[string]string{}) {
			continue
		}
		if err := s.store.DeleteNetwork(ctx, c.AccountID, n.ID); err != nil {
			if errdefs.Is(err, errdefs.Conflict) || errdefs.Is(err, errdefs.NotFound) {
				continue // in use, or gone meanwhile
			}
			return err
		}
		rep.NetworksDeleted = append(rep.NetworksDeleted, n.Name)
		s.recordObjectEvent(ctx, c, n.ID, events.NetworkEventType, events.ActionDestroy, NetworkID(n.ID), map[string]string{"name": n.Name, "type": "bridge"})
	}
	return writeJSON(w, http.StatusOK, rep)
}

// pruneVolumes is `docker volume prune` (see volumes.go).
func (s *Server) pruneVolumes(w http.ResponseWriter, r *http.Request) error {
	return s.pruneOwnVolumes(w, r)
}

// pruneBuildCache is the build cache part of `docker system prune`: images
// are not built here, so there is no cache to remove.
func (s *Server) pruneBuildCache(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, build.CachePruneReport{CachesDeleted: []string{}})
}

// nodeCgroups is the cgroup version and driver most running nodes report
// (on a tie, the one that reached that count first in name order). When
// no node reports any (simulated nodes), the driver is "none" and the
// version the Engine API's default, "1".
func nodeCgroups(nodes []store.Node) (version, driver string) {
	count := map[[2]string]int{}
	best := 0
	for _, n := range nodes {
		if n.State != "running" || n.CgroupVersion == "" {
			continue
		}
		k := [2]string{n.CgroupVersion, n.CgroupDriver}
		count[k]++
		if count[k] > best {
			best, version, driver = count[k], k[0], k[1]
		}
	}
	if version == "" {
		return "1", "none"
	}
	if driver == "" {
		driver = "cgroupfs"
	}
	return version, driver
}
