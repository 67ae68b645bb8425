package service

// Volumes: an account's named storage, shared by both APIs. A CloudAPI
// volume has type tritonnfs, a Docker one type local; both are storage on
// one node (the runc driver's volumes/<id>). A tritonnfs volume gets its
// node when it is created (the runc node holding the fewest volumes), and
// instances on any node mount it: the agentapi hands the other nodes the
// address and share token of its node, whose agent serves it (see
// agent/volumes_share.go). A local volume lives on the node of the first
// instance that mounts it, and every later instance that mounts it is
// placed on that node. Tenants name volumes, never host paths.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/scheduler"
	"flotilla/store"
)

// Volume types (volumes.type).
const (
	VolumeTypeTritonNFS = "tritonnfs"
	VolumeTypeLocal     = "local"
)

// DefaultVolumeSizeMiB is the size of a volume created without one (10 GiB,
// as Triton).
const DefaultVolumeSizeMiB = 10240

// VolumeSizesMiB are the sizes a tritonnfs volume may have (Triton's
// VOLAPI list): 10 to 100 GiB in steps of 10, then to 1000 GiB in steps of
// 100.
var VolumeSizesMiB = func() []int64 {
	var out []int64
	for g := int64(10); g <= 100; g += 10 {
		out = append(out, g*1024)
	}
	for g := int64(200); g <= 1000; g += 100 {
		out = append(out, g*1024)
	}
	return out
}()

var volumeNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,255}$`)

// VolumeRequest is a volume create from either API.
type VolumeRequest struct {
	Name      string // empty: a generated one
	Type      string // tritonnfs or local
	SizeMiB   int64  // 0: DefaultVolumeSizeMiB
	Labels    map[string]string
	Tags      map[string]any
	Networks  []string
	Affinity  []string
	Anonymous bool
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// CreateVolume validates and records a volume of c's account. It returns
// Invalid for a bad name, type or option, Conflict (VolumeAlreadyExists)
// for a name in use, Conflict (VolumeSizeNotAvailable) for a tritonnfs size
// not in VolumeSizesMiB.
func (s *Service) CreateVolume(ctx context.Context, c Caller, req VolumeRequest) (store.Volume, error) {
	switch req.Type {
	case VolumeTypeTritonNFS, VolumeTypeLocal:
	default:
		return store.Volume{}, errdefs.InvalidArgument("volume type %q is not supported: use %s", req.Type, VolumeTypeTritonNFS)
	}
	if req.Name == "" {
		if req.Type == VolumeTypeLocal {
			req.Name = randomHex(32)
		} else {
			req.Name = "vol-" + randomHex(4)
		}
	}
	if !volumeNameRE.MatchString(req.Name) {
		return store.Volume{}, errdefs.InvalidArgument("invalid volume name %q: use up to 256 letters, digits, '_', '.' or '-', starting with a letter or digit", req.Name)
	}
	if len(req.Networks) > 0 {
		return store.Volume{}, errdefs.InvalidArgument("volume networks are not supported: nodes reach a shared volume over their own network; leave out networks (-N)")
	}
	if len(req.Affinity) > 0 && req.Type != VolumeTypeTritonNFS {
		return store.Volume{}, errdefs.InvalidArgument("affinity is for shared volumes (%s): a %s volume lives on the node of the first container that mounts it", VolumeTypeTritonNFS, req.Type)
	}
	rules, err := scheduler.ParseRules(req.Affinity)
	if err != nil {
		return store.Volume{}, err
	}
	if req.SizeMiB == 0 {
		req.SizeMiB = DefaultVolumeSizeMiB
	}
	if req.SizeMiB < 0 {
		return store.Volume{}, errdefs.InvalidArgument("volume size %d is not positive", req.SizeMiB)
	}
	if req.Type == VolumeTypeTritonNFS && !containsSize(req.SizeMiB) {
		return store.Volume{}, &errdefs.Error{Code: errdefs.Conflict, Reason: "VolumeSizeNotAvailable",
			Message: "volume size " + strconv.FormatInt(req.SizeMiB, 10) + " MiB is not available; see ListVolumeSizes (triton volume sizes)"}
	}
	vol := store.Volume{OwnerID: c.AccountID, Name: req.Name, Type: req.Type, SizeMiB: req.SizeMiB,
		Anonymous: req.Anonymous, Labels: req.Labels, Tags: req.Tags}
	if req.Type == VolumeTypeTritonNFS {
		// A shared volume gets its node now: instances on any node mount it
		// from there. Without a node that can hold one, the first instance
		// that mounts it gives it its own.
		home, err := s.volumeHome(ctx, c.AccountID, req.Name, rules)
		if err != nil {
			return store.Volume{}, err
		}
		if home != "" {
			vol.NodeID = &home
		}
	}
	v, err := s.Store.CreateVolume(ctx, vol)
	if err != nil {
		return store.Volume{}, err
	}
	s.Log.Info("volume created", "account", c.Login, "volume", v.ID, "name", v.Name, "type", v.Type)
	return v, nil
}

// volumeHome picks the node a new shared volume lives on: among the nodes
// that can hold one, those its hard affinity rules allow (rules name the
// owner's instances, as an instance's do), with the most soft rules met,
// the one holding the fewest volumes. It returns "" without such nodes and
// rules (the first instance that mounts the volume gives it its node), and
// Conflict when rules leave no node.
func (s *Service) volumeHome(ctx context.Context, owner, name string, rules []scheduler.Rule) (string, error) {
	nodes, err := s.Store.VolumeHomeCandidates(ctx)
	if err != nil {
		return "", err
	}
	switch {
	case len(nodes) == 0 && len(rules) > 0:
		return "", &errdefs.Error{Code: errdefs.Conflict, Reason: "InsufficientCapacity",
			Message: "no node can hold volume " + name + " (this cloud runs no runc node), so its affinity rules cannot be met"}
	case len(nodes) == 0:
		return "", nil
	case len(rules) == 0:
		return nodes[0], nil
	}
	residents, err := s.Store.OwnerResidents(ctx, owner)
	if err != nil {
		return "", err
	}
	on := map[string][]scheduler.Resident{}
	for _, r := range residents {
		on[r.NodeID] = append(on[r.NodeID], scheduler.Resident{ID: r.ID, OwnerID: owner, Name: r.Name, Tags: r.Tags, NodeID: r.NodeID})
	}
	best, bestSoft := "", -1
	for _, n := range nodes {
		soft, ok := 0, true
		for _, rule := range rules {
			matched := slices.ContainsFunc(on[n], rule.Matches)
			met := matched == (rule.Operator == scheduler.OpEqual)
			if rule.Soft {
				if met {
					soft++
				}
				continue
			}
			if !met {
				ok = false
				break
			}
		}
		if ok && soft > bestSoft {
			best, bestSoft = n, soft
		}
	}
	if best == "" {
		texts := make([]string, len(rules))
		for i, r := range rules {
			texts[i] = r.String()
		}
		return "", &errdefs.Error{Code: errdefs.Conflict, Reason: "InsufficientCapacity",
			Message: "no node that can hold volume " + name + " meets its affinity rules (" + strings.Join(texts, ", ") + ")"}
	}
	return best, nil
}

func containsSize(n int64) bool {
	for _, s := range VolumeSizesMiB {
		if s == n {
			return true
		}
	}
	return false
}

// DeleteVolume removes c's volume (by id or name) and then its storage on
// its node. NotFound if there is none, Conflict (VolumeInUse) while an
// instance mounts it. The row is the truth: a node that cannot remove the
// storage is logged, and the volume is deleted all the same.
func (s *Service) DeleteVolume(ctx context.Context, c Caller, idOrName string) (store.Volume, error) {
	v, err := s.Store.DeleteVolume(ctx, c.AccountID, idOrName)
	if err != nil {
		return store.Volume{}, err
	}
	s.Log.Info("volume deleted", "account", c.Login, "volume", v.ID, "name", v.Name)
	if v.NodeID != nil {
		s.removeVolumeStorage(ctx, v)
	}
	return v, nil
}

// RenameVolume gives c's volume (by id or name) another name. Invalid for
// a bad name, NotFound without the volume, Conflict (VolumeAlreadyExists)
// for a name in use.
func (s *Service) RenameVolume(ctx context.Context, c Caller, idOrName, name string) (store.Volume, error) {
	if !volumeNameRE.MatchString(name) {
		return store.Volume{}, errdefs.InvalidArgument("invalid volume name %q: use up to 256 letters, digits, '_', '.' or '-', starting with a letter or digit", name)
	}
	v, err := s.Store.RenameVolume(ctx, c.AccountID, idOrName, name)
	if err != nil {
		return store.Volume{}, err
	}
	s.Log.Info("volume renamed", "account", c.Login, "volume", v.ID, "name", v.Name)
	return v, nil
}

// volumeRemoveTimeout bounds the wait for a node to remove a deleted
// volume's storage (the node waits up to agent.DefaultVolumeRemoveWait for
// containers that are on their way out).
const volumeRemoveTimeout = 20 * time.Second

// removeVolumeStorage asks the node of deleted volume v to remove its
// storage, logging a failure.
func (s *Service) removeVolumeStorage(ctx context.Context, v store.Volume) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), volumeRemoveTimeout)
	defer cancel()
	log := s.Log.With("volume", v.ID, "node", *v.NodeID)
	ns, err := s.Store.NodeStream(ctx, *v.NodeID)
	if err == nil {
		err = s.nodeClient().RemoveVolume(ctx, nodeclient.Node{ID: ns.NodeID, Address: ns.Address, Token: ns.Token}, v.ID)
	}
	switch {
	case err == nil:
		log.Info("volume storage removed")
	case errdefs.Is(err, errdefs.NotImplemented):
		log.Info("volume storage not removed: its node keeps none", "err", err)
	default:
		log.Warn("volume storage not removed from its node", "err", err)
	}
}

// MountRequest asks for a volume at a path of a new container: by name
// (created when missing and Create is set), or anonymous (Name empty).
type MountRequest struct {
	Name        string
	Destination string
	ReadOnly    bool
}

// ResolveMounts turns mount requests into the driver's volume mounts,
// creating anonymous volumes and, with create, missing named ones (of
// type typ), as `docker run -v` does. It returns Invalid for a bad path or
// a missing volume without create.
func (s *Service) ResolveMounts(ctx context.Context, c Caller, reqs []MountRequest, typ string, create bool) ([]driver.VolumeMount, error) {
	var out []driver.VolumeMount
	seen := map[string]bool{}
	for _, m := range reqs {
		dst := m.Destination
		if !path.IsAbs(dst) || path.Clean(dst) == "/" || strings.ContainsAny(dst, ",:") {
			return nil, errdefs.InvalidArgument("invalid mount point %q for a volume: give an absolute path other than /", dst)
		}
		dst = path.Clean(dst)
		if seen[dst] {
			return nil, errdefs.InvalidArgument("duplicate mount point: %s", dst)
		}
		seen[dst] = true
		var v store.Volume
		var err error
		switch {
		case m.Name == "":
			v, err = s.CreateVolume(ctx, c, VolumeRequest{Type: typ, Anonymous: true})
		default:
			v, err = s.Store.GetVolume(ctx, c.AccountID, m.Name)
			if errdefs.Is(err, errdefs.NotFound) {
				if !create {
					return nil, errdefs.InvalidArgument("volume %s not found: create it first (triton volume create -n %s)", m.Name, m.Name)
				}
				v, err = s.CreateVolume(ctx, c, VolumeRequest{Name: m.Name, Type: typ})
				if errdefs.Is(err, errdefs.Conflict) { // made meanwhile by another request
					v, err = s.Store.GetVolume(ctx, c.AccountID, m.Name)
				}
			}
		}
		if err != nil {
			return nil, err
		}
		out = append(out, driver.VolumeMount{Volume: v.ID, Name: v.Name, Destination: dst, ReadOnly: m.ReadOnly})
	}
	return out, nil
}

// volumePlacement checks that the volumes an instance mounts are the
// caller's and returns the node their storage lives on ("" when none has
// been mounted yet). Volumes on two different nodes cannot be mounted
// together.
func (s *Service) volumePlacement(ctx context.Context, owner string, mounts []driver.VolumeMount) (string, []string, error) {
	node := ""
	var ids []string
	for _, m := range mounts {
		v, err := s.Store.GetVolume(ctx, owner, m.Volume)
		if err != nil {
			if errdefs.Is(err, errdefs.NotFound) {
				return "", nil, errdefs.InvalidArgument("volume %s not found", m.Volume)
			}
			return "", nil, err
		}
		ids = append(ids, v.ID)
		if v.NodeID == nil || v.Type == VolumeTypeTritonNFS {
			// Shared volumes are mounted from their node by any other.
			continue
		}
		if node != "" && node != *v.NodeID {
			return "", nil, errdefs.InvalidArgument("volumes mounted together must live on one node, and %s lives on another; mount it in a container of its own", v.Name)
		}
		node = *v.NodeID
	}
	return node, ids, nil
}
