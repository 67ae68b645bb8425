package service

// Images made step by step (`docker build`): a layer tar the Docker
// endpoint made (COPY, ADD) or none (a change of configuration only) on
// top of one of the account's images, written like any other image, so the
// blob tenancy rules hold as for commits. RUN steps are commits of build
// containers (CommitInstanceNew).

import (
	"context"
	"io"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/errdefs"
	"flotilla/store"
)

// BuildTag is the tag (and docker label) of the containers `docker build`
// runs its RUN steps in; its value is the build's id. The Docker endpoint
// leaves such containers out of its lists.
const BuildTag = "docker_build"

// StepImage makes an image owned by owner of the image baseID (one owner
// can see) with, on top, the layer tar at layerPath (gzip'd or not; ""
// adds none) and cfg as its configuration. The image's history gets hist.
// It returns the image and whether it is new: false when owner already had
// an image of that content, which is returned. Errors: Invalid when the
// base image is gone or its layers are no longer the account's to use.
func (s *Service) StepImage(ctx context.Context, owner, baseID, layerPath string, cfg v1.Config, hist v1.History, meta ImageMeta) (store.Image, bool, error) {
	if _, err := s.Blobs(); err != nil {
		return store.Image{}, false, err
	}
	baseRow, err := s.Store.GetImage(ctx, owner, baseID)
	if err != nil {
		return store.Image{}, false, errdefs.Wrap(errdefs.Invalid, err, "the image %s no longer exists", baseID)
	}
	base, err := s.OCIImage(ctx, baseID)
	if err != nil {
		return store.Image{}, false, errdefs.Wrap(errdefs.Invalid, err, "the image %s has no content", baseID)
	}
	m, err := base.Manifest()
	if err != nil {
		return store.Image{}, false, imageErr(err, "read the manifest of image %s", baseID)
	}
	for _, l := range m.Layers {
		ok, err := s.Store.LayerVisible(ctx, &owner, l.Digest.String())
		if err != nil {
			return store.Image{}, false, err
		}
		if !ok {
			return store.Image{}, false, errdefs.InvalidArgument("the image %s (%s) is no longer available to this account", baseRow.ID, baseRow.Name)
		}
	}
	if meta.Type == "" {
		meta.Type = ImageTypeDocker
	}
	if meta.OS == "" {
		meta.OS = baseRow.OS
	}
	if err := validateMeta(&meta, ImageTypeDocker); err != nil {
		return store.Image{}, false, err
	}
	im, existed, err := s.imageOnTop(ctx, owner, base, layerPath, &cfg, hist, meta)
	return im, !existed, err
}

// ScratchImage is an image of no layers and configuration cfg, owned by
// owner: the base of `FROM scratch`.
func (s *Service) ScratchImage(ctx context.Context, owner string, cfg v1.Config) (store.Image, bool, error) {
	if _, err := s.Blobs(); err != nil {
		return store.Image{}, false, err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{Architecture: runtime.GOARCH, OS: "linux",
		Created: v1.Time{Time: time.Now().UTC().Truncate(time.Second)}, Config: cfg, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		return store.Image{}, false, imageErr(err, "make an empty image")
	}
	img = mutate.MediaType(img, types.DockerManifestSchema2)
	img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	im, existed, err := s.recordImage(ctx, &owner, img, ImageMeta{Type: ImageTypeDocker, Name: "<none>", Version: "<none>", OS: "linux"}, nil)
	return im, !existed, err
}

// imageOnTop records the image base plus the layer at layerPath ("" for
// none) with cfg (nil: base's) and hist, and whether it existed already.
func (s *Service) imageOnTop(ctx context.Context, owner string, base v1.Image, layerPath string, cfg *v1.Config, hist v1.History, meta ImageMeta) (store.Image, bool, error) {
	m, err := base.Manifest()
	if err != nil {
		return store.Image{}, false, imageErr(err, "read the manifest of the base image")
	}
	now := time.Now().UTC().Truncate(time.Second)
	hist.Created = v1.Time{Time: now}
	img := base
	if layerPath != "" {
		mt := types.DockerLayer
		if m.MediaType == types.OCIManifestSchema1 || m.MediaType == "" {
			mt = types.OCILayer
		}
		layer, err := tarball.LayerFromFile(layerPath, tarball.WithMediaType(mt))
		if err != nil {
			return store.Image{}, false, errdefs.Wrap(errdefs.Internal, err, "read a new layer")
		}
		if img, err = mutate.Append(base, mutate.Addendum{Layer: layer, History: hist}); err != nil {
			return store.Image{}, false, imageErr(err, "build the image")
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return store.Image{}, false, imageErr(err, "build the image config")
	}
	cf = cf.DeepCopy()
	if layerPath == "" {
		hist.EmptyLayer = true
		cf.History = append(cf.History, hist)
	}
	cf.Created = v1.Time{Time: now}
	cf.Author = hist.Author
	if cfg != nil {
		cf.Config = *cfg
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return store.Image{}, false, imageErr(err, "build the image config")
	}
	return s.recordImage(ctx, &owner, img, meta, nil)
}

// nodesWithDriver lists the nodes to leave out of a placement that needs
// driver; it returns NotImplemented, saying what to do, when no running
// node has it.
func (s *Service) nodesWithoutDriver(ctx context.Context, drv, why string) (map[string]bool, error) {
	nodes, err := s.Store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	var others []string
	found := false
	for _, n := range nodes {
		if n.Driver == drv && n.State == "running" {
			found = true
			continue
		}
		out[n.ID] = true
		if n.State == "running" {
			others = append(others, n.Name+" ("+n.Driver+")")
		}
	}
	if !found {
		return nil, errdefs.New(errdefs.NotImplemented, "%s needs a node that runs containers with %s, and this cloud has none running (its nodes: %v); ask the operator for one", why, drv, others)
	}
	return out, nil
}

// RequireDriver returns NotImplemented, naming what needs it (why), unless
// a running node has driver drv.
func (s *Service) RequireDriver(ctx context.Context, drv, why string) error {
	_, err := s.nodesWithoutDriver(ctx, drv, why)
	return err
}

// ImageFilesystem returns the flattened filesystem (a tar) of an image
// owner can see: what `COPY --from` copies from. NotFound for an image
// owner cannot see; Invalid for one without content.
func (s *Service) ImageFilesystem(ctx context.Context, owner, id string) (io.ReadCloser, error) {
	if _, err := s.Store.GetImage(ctx, owner, id); err != nil {
		return nil, err
	}
	img, err := s.OCIImage(ctx, id)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "the image %s has no content", id)
	}
	return mutate.Extract(img), nil
}
