package dockerapi

// Docker volumes: `docker volume create/ls/inspect/rm/prune` over the
// account's volumes (type local), and the volume parts of `docker run`:
// `-v name:/path[:ro]`, anonymous `-v /path`, `--mount type=volume`. Host
// paths (`-v /host:/ctr`, `--mount type=bind`) are refused: a tenant never
// mounts a node's filesystem.

import (
	"context"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"
	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) volumeRoutes(r chi.Router) {
	r.Get("/volumes", s.handle(s.listVolumes))
	r.Post("/volumes/create", s.handle(s.createVolume))
	r.Get("/volumes/{name}", s.handle(s.inspectVolume))
	r.Delete("/volumes/{name}", s.handle(s.removeVolume))
}

// volumeMountpoint is where a volume's data lives on its node, as inspect
// shows it.
func volumeMountpoint(v store.Volume) string {
	return "/var/lib/flotilla/volumes/" + v.ID + "/_data"
}

// mountsOf renders a container's volume mounts as inspect and ps show
// them (docker compose compares them with its project's volumes to decide
// whether a container is current).
func mountsOf(p service.ProcessSpec) []container.MountPoint {
	out := []container.MountPoint{}
	for _, m := range p.Options.Volumes {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		out = append(out, container.MountPoint{Type: mount.TypeVolume, Name: m.Name, Driver: "local",
			Source: volumeMountpoint(store.Volume{ID: m.Volume}), Destination: m.Destination, Mode: mode, RW: !m.ReadOnly})
	}
	return out
}

func dockerVolume(v store.Volume, refs int) *volume.Volume {
	labels := v.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	out := &volume.Volume{Name: v.Name, Driver: "local", Mountpoint: volumeMountpoint(v), Labels: labels, Scope: "local",
		CreatedAt: v.CreatedAt.UTC().Format(time.RFC3339), Options: map[string]string{"size": sizeString(v.SizeMiB)}}
	if refs >= 0 {
		out.UsageData = &volume.UsageData{Size: -1, RefCount: int64(refs)}
	}
	return out
}

func sizeString(mib int64) string {
	if mib%1024 == 0 {
		return strconv.FormatInt(mib/1024, 10) + "G"
	}
	return strconv.FormatInt(mib, 10) + "M"
}

// volumeSize reads `-o size=` (10G, 512M, 1T; a bare number is MiB).
func volumeSize(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "I")
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "M"):
		s = s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		s, mult = s[:len(s)-1], 1024
	case strings.HasSuffix(s, "T"):
		s, mult = s[:len(s)-1], 1024*1024
	}
	var n int64
	if s == "" || len(s) > 9 {
		return 0, errdefs.InvalidArgument("invalid volume size: give a size such as 10G or 512M")
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, errdefs.InvalidArgument("invalid volume size: give a size such as 10G or 512M")
		}
		n = n*10 + int64(r-'0')
	}
	if n <= 0 {
		return 0, errdefs.InvalidArgument("invalid volume size: give a positive size such as 10G")
	}
	return n * mult, nil
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	var req volume.CreateOptions
	if err := httpx.DecodeJSON(r, maxBody, false, &req); err != nil {
		return err
	}
	if req.Driver != "" && req.Driver != "local" {
		return errdefs.InvalidArgument("volume driver %q is not supported: use local (the default)", req.Driver)
	}
	var size int64
	for k, v := range req.DriverOpts {
		if k != "size" {
			return errdefs.InvalidArgument("volume option %q is not supported: only size (e.g. -o size=10G)", k)
		}
		n, err := volumeSize(v)
		if err != nil {
			return err
		}
		size = n
	}
	if req.Name != "" {
		if v, err := s.store.GetVolume(r.Context(), c.AccountID, req.Name); err == nil {
			// dockerd answers an existing name with the volume when the
			// options agree.
			if size == 0 || size == v.SizeMiB {
				return writeJSON(w, http.StatusCreated, dockerVolume(v, -1))
			}
			return errdefs.Conflictf("volume %s already exists with size %s", v.Name, sizeString(v.SizeMiB))
		}
	}
	v, err := s.Service.CreateVolume(r.Context(), c, service.VolumeRequest{Name: req.Name, Type: service.VolumeTypeLocal,
		SizeMiB: size, Labels: req.Labels})
	if err != nil {
		return err
	}
	s.recordObjectEvent(r.Context(), c, v.ID, events.VolumeEventType, events.ActionCreate, v.Name, map[string]string{"driver": "local"})
	return writeJSON(w, http.StatusCreated, dockerVolume(v, -1))
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	args, err := parseFilters(r.URL.Query().Get("filters"), "dangling", "driver", "label", "name")
	if err != nil {
		return err
	}
	list, err := s.store.ListVolumes(r.Context(), c.AccountID, "")
	if err != nil {
		return err
	}
	out := volume.ListResponse{Volumes: []*volume.Volume{}}
	for _, v := range list {
		users, err := s.store.VolumeUsers(r.Context(), c.AccountID, v.ID)
		if err != nil {
			return err
		}
		if !volumeMatches(args, v, len(users)) {
			continue
		}
		out.Volumes = append(out.Volumes, dockerVolume(v, -1))
	}
	return writeJSON(w, http.StatusOK, out)
}

func volumeMatches(args filters.Args, v store.Volume, refs int) bool {
	if d := args.Get("dangling"); len(d) > 0 {
		want := d[0] == "true" || d[0] == "1"
		if want != (refs == 0) {
			return false
		}
	}
	if args.Contains("driver") && !args.ExactMatch("driver", "local") {
		return false
	}
	if args.Contains("name") {
		ok := false
		for _, n := range args.Get("name") {
			if strings.Contains(v.Name, n) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return matchLabels(args, "label", v.Labels)
}

func (s *Server) inspectVolume(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	name := chi.URLParam(r, "name")
	v, err := s.store.GetVolume(r.Context(), c.AccountID, name)
	if err != nil {
		return noSuchVolume(err, name)
	}
	return writeJSON(w, http.StatusOK, dockerVolume(v, -1))
}

func noSuchVolume(err error, name string) error {
	if errdefs.Is(err, errdefs.NotFound) {
		return errdefs.Wrap(errdefs.NotFound, err, "get %s: no such volume", name)
	}
	return err
}

func (s *Server) removeVolume(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	name := chi.URLParam(r, "name")
	v, err := s.Service.DeleteVolume(r.Context(), c, name)
	if err != nil {
		if errdefs.Is(err, errdefs.NotFound) && boolParam(r.URL.Query().Get("force")) {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if errdefs.Is(err, errdefs.Conflict) {
			return errdefs.Wrap(errdefs.Conflict, err, "remove %s: volume is in use - [%s]", name, strings.TrimPrefix(errdefs.MessageOf(err), "volume "+name+" is in use by "))
		}
		return noSuchVolume(err, name)
	}
	s.recordObjectEvent(r.Context(), c, v.ID, events.VolumeEventType, events.ActionDestroy, v.Name, map[string]string{"driver": "local"})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// pruneOwnVolumes is `docker volume prune`: the account's volumes no
// container mounts — only anonymous ones unless the all filter is true,
// as dockerd 23+.
func (s *Server) pruneOwnVolumes(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	args, until, err := pruneFilters(r, "all")
	if err != nil {
		return err
	}
	all := false
	if v := args.Get("all"); len(v) > 0 {
		all = v[0] == "true" || v[0] == "1"
	}
	list, err := s.store.ListVolumes(r.Context(), c.AccountID, service.VolumeTypeLocal)
	if err != nil {
		return err
	}
	rep := volume.PruneReport{VolumesDeleted: []string{}}
	for _, v := range list {
		if !all && !v.Anonymous || until != nil && !v.CreatedAt.Before(*until) || !labelsPrunable(args, v.Labels) {
			continue
		}
		if _, err := s.Service.DeleteVolume(r.Context(), c, v.ID); err != nil {
			if errdefs.Is(err, errdefs.Conflict) || errdefs.Is(err, errdefs.NotFound) {
				continue
			}
			return err
		}
		rep.VolumesDeleted = append(rep.VolumesDeleted, v.Name)
		s.recordObjectEvent(r.Context(), c, v.ID, events.VolumeEventType, events.ActionDestroy, v.Name, map[string]string{"driver": "local"})
	}
	return writeJSON(w, http.StatusOK, rep)
}

// ownVolumes is the account's volumes for `docker system df`.
func (s *Server) ownVolumes(ctx context.Context, c service.Caller) ([]*volume.Volume, error) {
	list, err := s.store.ListVolumes(ctx, c.AccountID, "")
	if err != nil {
		return nil, err
	}
	out := []*volume.Volume{}
	for _, v := range list {
		users, err := s.store.VolumeUsers(ctx, c.AccountID, v.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, dockerVolume(v, len(users)))
	}
	return out, nil
}

// dockerMounts reads the volumes of a create: Binds (`-v`), Mounts
// (`--mount`) and Config.Volumes (anonymous `-v /path`). Host paths,
// --volumes-from and other mount types are refused with what to do
// instead.
func dockerMounts(cfg container.Config, hc container.HostConfig) ([]service.MountRequest, error) {
	if len(hc.VolumesFrom) > 0 {
		return nil, errdefs.InvalidArgument("--volumes-from is not supported: mount the same named volume (-v NAME:/path) in both containers")
	}
	if hc.VolumeDriver != "" && hc.VolumeDriver != "local" {
		return nil, errdefs.InvalidArgument("volume driver %q is not supported: use local (the default)", hc.VolumeDriver)
	}
	var out []service.MountRequest
	for _, b := range hc.Binds {
		parts := strings.Split(b, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, errdefs.InvalidArgument("invalid volume specification: %q: use NAME:/path[:ro]", b)
		}
		src, dst := parts[0], parts[1]
		if strings.HasPrefix(src, "/") || strings.HasPrefix(src, ".") || strings.HasPrefix(src, "~") {
			return nil, errdefs.InvalidArgument("host paths cannot be mounted (%s): this cloud's containers see only volumes; use a named volume (-v NAME:%s) and docker cp to fill it", src, dst)
		}
		ro := false
		if len(parts) == 3 {
			for _, o := range strings.Split(parts[2], ",") {
				switch o {
				case "ro":
					ro = true
				case "rw", "":
				default:
					return nil, errdefs.InvalidArgument("invalid volume mode %q in %q: use ro or rw", o, b)
				}
			}
		}
		out = append(out, service.MountRequest{Name: src, Destination: dst, ReadOnly: ro})
	}
	for _, m := range hc.Mounts {
		switch m.Type {
		case mount.TypeVolume, "":
		case mount.TypeBind:
			return nil, errdefs.InvalidArgument("host paths cannot be mounted (--mount type=bind,source=%s): use --mount type=volume,source=NAME,target=%s", m.Source, m.Target)
		case mount.TypeTmpfs:
			return nil, errdefs.InvalidArgument("--mount type=tmpfs is not supported: use --tmpfs %s", m.Target)
		default:
			return nil, errdefs.InvalidArgument("mount type %q is not supported: use type=volume", m.Type)
		}
		if m.VolumeOptions != nil && m.VolumeOptions.DriverConfig != nil && m.VolumeOptions.DriverConfig.Name != "" && m.VolumeOptions.DriverConfig.Name != "local" {
			return nil, errdefs.InvalidArgument("volume driver %q is not supported: use local", m.VolumeOptions.DriverConfig.Name)
		}
		if strings.HasPrefix(m.Source, "/") {
			return nil, errdefs.InvalidArgument("host paths cannot be mounted (%s): use a volume name as the source", m.Source)
		}
		out = append(out, service.MountRequest{Name: m.Source, Destination: m.Target, ReadOnly: m.ReadOnly})
	}
	for dst := range cfg.Volumes {
		dup := false
		for _, m := range out {
			if path.Clean(m.Destination) == path.Clean(dst) {
				dup = true
			}
		}
		if !dup {
			out = append(out, service.MountRequest{Destination: dst})
		}
	}
	return out, nil
}

// removeAnonymousVolumes is `docker rm -v`: the anonymous volumes the
// container mounted go with it (named ones stay, as with dockerd).
func (s *Server) removeAnonymousVolumes(ctx context.Context, c service.Caller, in store.Instance) {
	for _, m := range service.DecodeProcessSpec(in.Spec).Options.Volumes {
		v, err := s.store.GetVolume(ctx, c.AccountID, m.Volume)
		if err != nil || !v.Anonymous {
			continue
		}
		if _, err := s.Service.DeleteVolume(ctx, c, v.ID); err != nil {
			s.log.Info("anonymous volume kept", "volume", v.ID, "instance", in.ID, "err", err)
		}
	}
}
