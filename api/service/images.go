package service

// Images: the one place where image content enters and leaves the control
// plane. Operators (`flotilla admin image`), `flotilla dev` and the Docker
// endpoint all call these methods; every blob goes through the BlobStore by
// digest (verified on write), and the images row records the manifest digest,
// manifest, config and size. Agents read the blobs back over the OCI
// distribution API in api/agentapi.
//
// This file also imports flotilla/oci and go-containerregistry (name, v1,
// remote, tarball, mutate, partial), which service.go's doc comment should
// list.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/errdefs"
	"flotilla/oci"
	"flotilla/store"
)

// Image types (images.type).
const (
	ImageTypeDocker      = "docker"
	ImageTypeZoneDataset = "zone-dataset"
	ImageTypeLXDataset   = "lx-dataset"
	ImageTypeZvol        = "zvol"
)

// blobStores holds each Service's blob store until Service has a field for
// it (see SetBlobs).
// SetBlobs sets the blob store image content is written to and read from.
func (s *Service) SetBlobs(b oci.BlobStore) { s.blobs = b }

// Blobs returns the blob store; Unavailable when none was configured.
func (s *Service) Blobs() (oci.BlobStore, error) {
	if s.blobs != nil {
		return s.blobs, nil
	}
	return nil, errdefs.New(errdefs.Unavailable, "this control plane has no image blob store configured (serve --data)")
}

// ImageMeta describes an image being imported: its CloudAPI attributes and,
// for a root filesystem, the runtime configuration to put in its config.
type ImageMeta struct {
	// ID fixes the image uuid (seed images); empty means a new random one.
	ID           string
	Name         string
	Version      string
	OS           string // default "linux"
	Type         string // default zone-dataset for rootfs imports, docker for Docker images
	Description  string
	Homepage     string
	Public       bool
	Tags         map[string]any
	Requirements map[string]any
	// Config is the runtime configuration (Cmd, Env, WorkingDir ...) of an
	// imported root filesystem. Ignored when importing a ready v1.Image.
	Config v1.Config
}

// LoadedImage is an image written by LoadArchive or Pull with the Docker
// repo:tags it was given.
type LoadedImage struct {
	Image    store.Image
	RepoTags []string
	// Existed is true when the same content was already recorded for the
	// owner (Docker's "Image is up to date").
	Existed bool
}

// PullOptions change where and how Pull fetches an image.
type PullOptions struct {
	// Registry is a mirror used instead of Docker Hub for references that
	// name no registry (or docker.io): "host:port" or "http(s)://host:port".
	Registry string
	// Username and Password authenticate to the registry (basic auth or
	// a token exchange, whichever it asks for).
	Username, Password string
	// Insecure talks plain HTTP to the registry.
	Insecure bool
	// Progress, when set, is called as layers are fetched.
	Progress func(PullProgress)
}

// PullProgress is one progress event of a pull, in Docker's words.
type PullProgress struct {
	// ID is the layer's short digest (12 hex digits).
	ID string
	// Status is "Pulling fs layer", "Already exists", "Downloading",
	// "Download complete" or "Pull complete".
	Status string
	// Current and Total are bytes, for "Downloading".
	Current, Total int64
}

// OCIImage returns the image id as a go-containerregistry image whose blobs
// are read from the blob store. It returns NotFound if there is no such
// image or it has no content (a record without blobs), Unavailable without a
// blob store.
func (s *Service) OCIImage(ctx context.Context, id string) (v1.Image, error) {
	blobs, err := s.Blobs()
	if err != nil {
		return nil, err
	}
	im, err := s.Store.ImageByID(ctx, id)
	if err != nil {
		return nil, err
	}
	if im.ManifestDigest == "" {
		return nil, errdefs.NotFoundf("image %s (%s) has no content in the blob store; import it again", im.ID, im.Name)
	}
	h, err := v1.NewHash(im.ManifestDigest)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "image %s has a bad manifest digest", im.ID)
	}
	return oci.BlobImage(ctx, blobs, h, false)
}

// writtenImage is what writeImage stored.
type writtenImage struct {
	digest   string
	manifest []byte
	config   []byte
	size     int64
}

// writeImage stores every blob of img for owner (layers, config, then the
// manifest, so a manifest in the store always has its blobs) and verifies
// each digest. A layer already in the store is reused without its bytes
// only when it belongs to an image owner can see; any other layer must be
// supplied by img and hash to its digest, so knowing another account's
// digest never makes its content readable. Sizes are checked against the
// image policy and owner's quota before anything is fetched.
func (s *Service) writeImage(ctx context.Context, owner *string, img v1.Image, progress func(PullProgress)) (writtenImage, error) {
	blobs, err := s.Blobs()
	if err != nil {
		return writtenImage{}, err
	}
	if progress == nil {
		progress = func(PullProgress) {}
	}
	raw, err := img.RawManifest()
	if err != nil {
		return writtenImage{}, imageErr(err, "read the image manifest")
	}
	m, err := img.Manifest()
	if err != nil {
		return writtenImage{}, imageErr(err, "parse the image manifest")
	}
	dgst, err := img.Digest()
	if err != nil {
		return writtenImage{}, imageErr(err, "compute the manifest digest")
	}
	if m.MediaType != "" && !m.MediaType.IsImage() {
		return writtenImage{}, errdefs.InvalidArgument("manifest %s has media type %s, not an image manifest", dgst, m.MediaType)
	}
	layerSizes := make([]int64, len(m.Layers))
	for i, d := range m.Layers {
		layerSizes[i] = d.Size
	}
	owned := false
	if owner != nil {
		_, err := s.Store.ImageByOwnerDigest(ctx, owner, dgst.String())
		owned = err == nil
	}
	if !owned {
		if _, err := s.checkImageSize(ctx, owner, len(raw), m.Config.Size, layerSizes); err != nil {
			return writtenImage{}, err
		}
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return writtenImage{}, imageErr(err, "read the image config")
	}
	if h, _, err := v1.SHA256(bytes.NewReader(cfg)); err != nil || h != m.Config.Digest {
		return writtenImage{}, errdefs.InvalidArgument("the image config hashes to %s, not %s as its manifest says", h, m.Config.Digest)
	}
	size := int64(len(cfg))
	reuse := make([]bool, len(m.Layers))
	for i, d := range m.Layers {
		size += d.Size
		if _, err := blobs.Stat(ctx, d.Digest); err != nil {
			continue
		}
		visible, err := s.Store.LayerVisible(ctx, owner, d.Digest.String())
		if err != nil {
			return writtenImage{}, err
		}
		if reuse[i] = visible; visible {
			progress(PullProgress{ID: shortDigest(d.Digest), Status: "Already exists"})
		}
	}
	for i, d := range m.Layers {
		if reuse[i] {
			continue
		}
		id := shortDigest(d.Digest)
		progress(PullProgress{ID: id, Status: "Pulling fs layer"})
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return writtenImage{}, imageErr(err, "open layer %s", d.Digest)
		}
		rc, err := l.Compressed()
		if err != nil {
			return writtenImage{}, imageErr(err, "fetch layer %s", d.Digest)
		}
		pr := &progressReader{r: io.LimitReader(rc, d.Size+1), total: d.Size, report: func(cur int64) {
			progress(PullProgress{ID: id, Status: "Downloading", Current: cur, Total: d.Size})
		}}
		err = blobs.Put(ctx, d.Digest, pr)
		rc.Close()
		if err != nil {
			return writtenImage{}, imageErr(err, "store layer %s", d.Digest)
		}
		progress(PullProgress{ID: id, Status: "Download complete"})
		progress(PullProgress{ID: id, Status: "Pull complete"})
	}
	if err := blobs.Put(ctx, m.Config.Digest, bytes.NewReader(cfg)); err != nil {
		return writtenImage{}, imageErr(err, "store config %s", m.Config.Digest)
	}
	if err := blobs.Put(ctx, dgst, bytes.NewReader(raw)); err != nil {
		return writtenImage{}, imageErr(err, "store manifest %s", dgst)
	}
	return writtenImage{digest: dgst.String(), manifest: raw, config: cfg, size: size}, nil
}

// imageErr keeps an errdefs error's code and calls anything else (a registry
// or archive failure) Invalid with what was being done.
func imageErr(err error, format string, args ...any) error {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return errdefs.Wrap(errdefs.Unavailable, err, format+": %v", append(args, err)...)
	}
	return errdefs.Wrap(errdefs.Invalid, err, format+": %v", append(args, err)...)
}

func shortDigest(h v1.Hash) string {
	if len(h.Hex) >= 12 {
		return h.Hex[:12]
	}
	return h.Hex
}

// progressReader reports how much was read, at most every 100 ms.
type progressReader struct {
	r      io.Reader
	n      int64
	total  int64
	last   time.Time
	report func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond || (err == io.EOF && p.n > 0) {
		p.last = now
		p.report(p.n)
	}
	return n, err
}

// recordImage writes img's blobs and records the image: a row with meta.ID
// that exists without content gets the content; a row with the same owner
// and digest is reused (Existed).
func (s *Service) recordImage(ctx context.Context, owner *string, img v1.Image, meta ImageMeta, progress func(PullProgress)) (store.Image, bool, error) {
	w, err := s.writeImage(ctx, owner, img, progress)
	if err != nil {
		return store.Image{}, false, err
	}
	if meta.ID != "" {
		if old, err := s.Store.ImageByID(ctx, meta.ID); err == nil {
			if old.ManifestDigest == w.digest {
				return old, true, nil
			}
			im, err := s.Store.SetImageBlobs(ctx, meta.ID, w.digest, w.manifest, w.config, w.size)
			return im, false, err
		} else if !errdefs.Is(err, errdefs.NotFound) {
			return store.Image{}, false, err
		}
	} else if meta.Type == ImageTypeDocker {
		if old, err := s.Store.ImageByOwnerDigest(ctx, owner, w.digest); err == nil {
			return old, true, nil
		} else if !errdefs.Is(err, errdefs.NotFound) {
			return store.Image{}, false, err
		}
	}
	if meta.OS == "" {
		meta.OS = "linux"
		if cf, err := img.ConfigFile(); err == nil && cf.OS != "" {
			meta.OS = cf.OS
		}
	}
	im, err := s.Store.CreateImage(ctx, store.Image{ID: meta.ID, OwnerID: owner, Name: meta.Name, Version: meta.Version,
		OS: meta.OS, Type: meta.Type, Description: meta.Description, Homepage: meta.Homepage, Public: meta.Public,
		Tags: meta.Tags, Requirements: meta.Requirements,
		ManifestDigest: w.digest, Manifest: w.manifest, Config: w.config, SizeBytes: w.size})
	if err != nil {
		return store.Image{}, false, err
	}
	s.Log.Info("image recorded", "image", im.ID, "name", im.Name, "version", im.Version, "digest", im.ManifestDigest, "size", im.SizeBytes)
	return im, false, nil
}

func validateMeta(meta *ImageMeta, defaultType string) error {
	if meta.Type == "" {
		meta.Type = defaultType
	}
	switch meta.Type {
	case ImageTypeZoneDataset, ImageTypeLXDataset, ImageTypeZvol, ImageTypeDocker, "other":
	default:
		return errdefs.InvalidArgument("image type %q is not one of zone-dataset, lx-dataset, zvol, docker, other", meta.Type)
	}
	if strings.TrimSpace(meta.Name) == "" {
		return errdefs.InvalidArgument("an image needs a name")
	}
	if meta.Type != ImageTypeDocker && meta.Version == "" {
		return errdefs.InvalidArgument("image %s needs a version", meta.Name)
	}
	return nil
}

// ImportImage writes a ready OCI image (a seed image, a VM image) and records
// it with meta. Importing content an image with meta.ID already has is a
// no-op; a row with meta.ID but other or no content gets this content.
func (s *Service) ImportImage(ctx context.Context, owner *string, img v1.Image, meta ImageMeta) (store.Image, error) {
	if err := validateMeta(&meta, ImageTypeZoneDataset); err != nil {
		return store.Image{}, err
	}
	im, _, err := s.recordImage(ctx, owner, img, meta, nil)
	return im, err
}

// ImportRootfs makes a one-layer image from a root filesystem tarball (plain
// or gzip) and records it with meta (type zone-dataset unless meta says
// otherwise). It returns Invalid for a bad tarball or meta.
func (s *Service) ImportRootfs(ctx context.Context, owner *string, rootfs io.Reader, meta ImageMeta) (store.Image, error) {
	if err := validateMeta(&meta, ImageTypeZoneDataset); err != nil {
		return store.Image{}, err
	}
	if _, err := s.Blobs(); err != nil {
		return store.Image{}, err
	}
	tmp, err := os.CreateTemp("", "flotilla-rootfs-*")
	if err != nil {
		return store.Image{}, errdefs.Wrap(errdefs.Internal, err, "spool the root filesystem")
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, rootfs); err != nil {
		return store.Image{}, imageErr(err, "read the root filesystem tarball")
	}
	if err := checkTar(tmp.Name()); err != nil {
		return store.Image{}, err
	}
	layer, err := tarball.LayerFromFile(tmp.Name(), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return store.Image{}, errdefs.Wrap(errdefs.Invalid, err, "read the root filesystem tarball")
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "flotilla image import",
		Created: v1.Time{Time: time.Now().UTC().Truncate(time.Second)}}})
	if err != nil {
		return store.Image{}, imageErr(err, "build the image")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return store.Image{}, imageErr(err, "build the image config")
	}
	cf = cf.DeepCopy()
	if meta.OS == "" {
		meta.OS = "linux"
	}
	cf.OS, cf.Architecture = meta.OS, runtime.GOARCH
	cf.Created = v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	cf.Config = meta.Config
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return store.Image{}, imageErr(err, "build the image config")
	}
	im, _, err := s.recordImage(ctx, owner, img, meta, nil)
	return im, err
}

// checkTar reads the (possibly gzip'd) tar at path to its end so a corrupt
// or non-tar file is refused with a clear message.
func checkTar(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "reopen the spooled tarball")
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "the root filesystem is not a valid gzip file")
		}
		r = zr
	}
	tr := tar.NewReader(r)
	n := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "the root filesystem is not a valid tar archive (after %d entries)", n)
		}
		n++
	}
	if n == 0 {
		return errdefs.InvalidArgument("the root filesystem tarball is empty")
	}
	return nil
}

// LoadArchive loads the images of a `docker save` tarball, an OCI layout
// directory, or a tar of an OCI layout (what `docker save` writes since
// Docker 25 is both) at path, as Docker images of owner, tagged with their
// repo:tags (owner's tags; images of operators, owner nil, are named repo
// with version tag instead). It returns Invalid for anything else.
func (s *Service) LoadArchive(ctx context.Context, owner *string, path string) ([]LoadedImage, error) {
	if _, err := s.Blobs(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, errdefs.NotFoundf("image archive %s not found", path)
	}
	if fi.IsDir() {
		return s.loadLayout(ctx, owner, path)
	}
	if hasTarEntry(path, "manifest.json") {
		return s.loadDockerArchive(ctx, owner, path)
	}
	if hasTarEntry(path, "index.json") {
		dir, err := os.MkdirTemp("", "flotilla-layout-*")
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "unpack the OCI layout")
		}
		defer os.RemoveAll(dir)
		f, err := os.Open(path)
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "open %s", path)
		}
		defer f.Close()
		if err := oci.Unpack(ctx, f, dir, oci.UnpackOptions{}); err != nil {
			return nil, err
		}
		return s.loadLayout(ctx, owner, dir)
	}
	return nil, errdefs.InvalidArgument("%s is neither a `docker save` archive (manifest.json) nor an OCI layout (index.json)", path)
}

// LoadArchiveReader is LoadArchive for a tarball read from r (`docker load`).
func (s *Service) LoadArchiveReader(ctx context.Context, owner *string, r io.Reader) ([]LoadedImage, error) {
	tmp, err := os.CreateTemp("", "flotilla-load-*.tar")
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "spool the image archive")
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, r); err != nil {
		return nil, imageErr(err, "read the image archive")
	}
	return s.LoadArchive(ctx, owner, tmp.Name())
}

// hasTarEntry reports whether the tar at path has a top-level entry named n.
func hasTarEntry(path, n string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return false
		}
		if strings.TrimPrefix(h.Name, "./") == n {
			return true
		}
	}
}

func (s *Service) loadDockerArchive(ctx context.Context, owner *string, path string) ([]LoadedImage, error) {
	descs, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read manifest.json of %s", path)
	}
	var out []LoadedImage
	for i, d := range descs {
		var img v1.Image
		if len(d.RepoTags) > 0 {
			img, err = oci.LoadDockerArchive(path, d.RepoTags[0])
		} else if len(descs) == 1 {
			img, err = oci.LoadDockerArchive(path, "")
		} else {
			err = errdefs.InvalidArgument("image %d of %s has no repo tag; load it from an archive of its own", i+1, path)
		}
		if err != nil {
			return nil, err
		}
		li, err := s.recordDocker(ctx, owner, img, d.RepoTags, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, li)
	}
	return out, nil
}

func (s *Service) loadLayout(ctx context.Context, owner *string, dir string) ([]LoadedImage, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "%s is not an OCI layout (no index.json)", dir)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "index.json of %s", dir)
	}
	var out []LoadedImage
	for _, d := range idx.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		img, err := oci.LoadOCILayout(dir, d.Digest.String())
		if err != nil {
			return nil, err
		}
		var tags []string
		for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
			if v := d.Annotations[k]; v != "" {
				if _, err := name.NewTag(v); err == nil && strings.ContainsAny(v, ":/") {
					tags = append(tags, v)
					break
				}
			}
		}
		li, err := s.recordDocker(ctx, owner, img, tags, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, li)
	}
	if len(out) == 0 {
		return nil, errdefs.InvalidArgument("OCI layout %s holds no image manifest (indexes of indexes are not supported)", dir)
	}
	return out, nil
}

// recordDocker writes a Docker image and points its repo tags at it.
func (s *Service) recordDocker(ctx context.Context, owner *string, img v1.Image, repoTags []string, progress func(PullProgress)) (LoadedImage, error) {
	var refs [][2]string
	for _, rt := range repoTags {
		repo, tag, err := ParseRepoTag(rt)
		if err != nil {
			return LoadedImage{}, err
		}
		refs = append(refs, [2]string{repo, tag})
	}
	meta := ImageMeta{Type: ImageTypeDocker, Name: "<none>", Version: "<none>"}
	if len(refs) > 0 {
		meta.Name, meta.Version = refs[0][0], refs[0][1]
	}
	im, existed, err := s.recordImage(ctx, owner, img, meta, progress)
	if err != nil {
		return LoadedImage{}, err
	}
	li := LoadedImage{Image: im, Existed: existed}
	for _, rt := range refs {
		if owner != nil {
			if err := s.Store.SetImageTag(ctx, *owner, rt[0], rt[1], im.ID); err != nil {
				return LoadedImage{}, err
			}
		}
		li.RepoTags = append(li.RepoTags, rt[0]+":"+rt[1])
	}
	return li, nil
}

// ParseRepoTag splits a Docker image reference into its repository in
// Docker's familiar form ("busybox", "quay.io/org/app") and its tag
// ("latest" when none is given). It returns Invalid for a malformed
// reference or one with a digest.
func ParseRepoTag(ref string) (repo, tag string, err error) {
	if strings.Contains(ref, "@") {
		return "", "", errdefs.InvalidArgument("%q names a digest; a tag was expected", ref)
	}
	t, err := name.NewTag(ref)
	if err != nil {
		return "", "", errdefs.Wrap(errdefs.Invalid, err, "invalid image reference %q", ref)
	}
	return familiarRepo(t.Context()), t.TagStr(), nil
}

func familiarRepo(r name.Repository) string {
	if r.RegistryStr() == name.DefaultRegistry {
		return strings.TrimPrefix(r.RepositoryStr(), "library/")
	}
	return r.RegistryStr() + "/" + r.RepositoryStr()
}

// Pull fetches ref (a tag or a digest reference) for owner from its registry
// (or opts.Registry for Docker Hub references), storing every blob, and
// tags it. For a multi-platform index it takes linux on this host's
// architecture. It returns NotFound when the registry has no such image,
// Unauthorized when it refuses the credentials, Invalid for a bad reference
// or an image over a size limit (wrapping errdefs.ErrTooLarge), Forbidden
// for a registry the image policy does not allow (not on the allowlist, or
// at a private address), Unavailable when it cannot be reached.
func (s *Service) Pull(ctx context.Context, owner *string, ref string, opts PullOptions) (LoadedImage, error) {
	if _, err := s.Blobs(); err != nil {
		return LoadedImage{}, err
	}
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return LoadedImage{}, errdefs.Wrap(errdefs.Invalid, err, "invalid image reference %q", ref)
	}
	familiar := familiarRepo(r.Context())
	if opts.Registry != "" && r.Context().RegistryStr() == name.DefaultRegistry {
		host := opts.Registry
		if rest, ok := strings.CutPrefix(host, "http://"); ok {
			host = rest
			nopts = append(nopts, name.Insecure)
		} else {
			host = strings.TrimPrefix(host, "https://")
		}
		host = strings.TrimRight(host, "/")
		mirrored := host + "/" + r.Context().RepositoryStr()
		if d, ok := r.(name.Digest); ok {
			mirrored += "@" + d.DigestStr()
		} else {
			mirrored += ":" + r.Identifier()
		}
		if r, err = name.ParseReference(mirrored, nopts...); err != nil {
			return LoadedImage{}, errdefs.Wrap(errdefs.Invalid, err, "registry mirror %q", opts.Registry)
		}
	}
	if err := s.imagePolicy.checkRegistry(r.Context().RegistryStr()); err != nil {
		return LoadedImage{}, err
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(s.imagePolicy.pullTransport()),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})}
	if opts.Username != "" || opts.Password != "" {
		ropts = append(ropts, remote.WithAuth(&authn.Basic{Username: opts.Username, Password: opts.Password}))
	}
	img, err := remote.Image(r, ropts...)
	if err != nil {
		return LoadedImage{}, registryErr(err, ref)
	}
	var tags []string
	if t, ok := r.(name.Tag); ok {
		tags = []string{familiar + ":" + t.TagStr()}
	}
	li, err := s.recordDocker(ctx, owner, img, tags, opts.Progress)
	if err != nil {
		return LoadedImage{}, registryErr(err, ref)
	}
	if len(tags) == 0 && li.Image.Name == "<none>" {
		li.Image.Name = familiar
	}
	return li, nil
}

// registryErr classifies an error from a registry by its HTTP status.
func registryErr(err error, ref string) error {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return errdefs.Wrap(errdefs.Unavailable, err, "pull of %s cancelled", ref)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case 404:
			return errdefs.Wrap(errdefs.NotFound, err, "image %s not found in its registry", ref)
		case 401, 403:
			return errdefs.Wrap(errdefs.Unauthorized, err, "the registry refused access to %s: log in or check the credentials", ref)
		case 429:
			return errdefs.Wrap(errdefs.TooManyRequests, err, "the registry rate-limits pulls of %s; try again later", ref)
		}
	}
	return errdefs.Wrap(errdefs.Unavailable, err, "pull of %s failed: %v", ref, err)
}

// SaveImages writes the images named by refs (anything ResolveImage takes)
// as one `docker save` tarball to w: repo:tag references keep their tag,
// other names save the image untagged.
func (s *Service) SaveImages(ctx context.Context, owner *string, refs []string, w io.Writer) error {
	if len(refs) == 0 {
		return errdefs.InvalidArgument("name at least one image to save")
	}
	m := map[name.Reference]v1.Image{}
	for _, ref := range refs {
		im, err := s.ResolveImage(ctx, owner, ref)
		if err != nil {
			return err
		}
		img, err := s.OCIImage(ctx, im.ID)
		if err != nil {
			return err
		}
		var key name.Reference
		if repo, tag, err := ParseRepoTag(ref); err == nil && !isIDLike(ref) && (im.Type == ImageTypeDocker || strings.Contains(ref, ":")) {
			key, err = name.NewTag(repo + ":" + tag)
			if err != nil {
				return errdefs.Wrap(errdefs.Invalid, err, "image reference %q", ref)
			}
		} else {
			d, err := name.NewDigest("flotilla/" + im.ID + "@" + im.ManifestDigest)
			if err != nil {
				return errdefs.Wrap(errdefs.Internal, err, "image %s", im.ID)
			}
			key = d
		}
		m[key] = img
	}
	if err := tarball.MultiRefWrite(m, w); err != nil {
		return imageErr(err, "write the image archive")
	}
	return nil
}

// SaveImage writes one image (by id or any name ResolveImage takes) as a
// `docker save` tarball to w.
func (s *Service) SaveImage(ctx context.Context, owner *string, id string, w io.Writer) error {
	return s.SaveImages(ctx, owner, []string{id}, w)
}

// Tag points owner's repo:tag (ref, "latest" when it names no tag) at the
// image named by id (anything ResolveImage takes). It returns NotFound for
// an unknown image, Invalid for a bad reference.
func (s *Service) Tag(ctx context.Context, owner string, id, ref string) error {
	repo, tag, err := ParseRepoTag(ref)
	if err != nil {
		return err
	}
	im, err := s.ResolveImage(ctx, &owner, id)
	if err != nil {
		return err
	}
	return s.Store.SetImageTag(ctx, owner, repo, tag, im.ID)
}

// Untag removes owner's repo:tag and returns the image it named. It returns
// NotFound when owner has no such tag.
func (s *Service) Untag(ctx context.Context, owner string, ref string) (string, error) {
	repo, tag, err := ParseRepoTag(ref)
	if err != nil {
		return "", err
	}
	return s.Store.DeleteImageTag(ctx, owner, repo, tag)
}

// RepoTags returns owner's repo:tags that name image id.
func (s *Service) RepoTags(ctx context.Context, owner string, id string) ([]string, error) {
	tags, err := s.Store.ListImageTags(ctx, owner, id)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		out = append(out, t.Repo+":"+t.Tag)
	}
	return out, nil
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if r != '-' {
				return false
			}
		case !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f'):
			return false
		}
	}
	return true
}

// isIDLike reports whether s could be an image id prefix.
func isIDLike(s string) bool {
	if len(s) < 4 || len(s) > 36 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r == '-') {
			return false
		}
	}
	return true
}

// ResolveImage finds the image owner (nil: an operator, who sees all) means
// by ref: an image uuid, a manifest digest ("sha256:..." or
// "repo@sha256:..."), CloudAPI's "name@version", a Docker "repo[:tag]"
// (the owner's tag first, then an image named repo with version tag, or the
// newest of that name when no tag is given), or a unique id prefix of at
// least 4 characters. It returns NotFound when nothing matches, Invalid for
// an ambiguous prefix.
func (s *Service) ResolveImage(ctx context.Context, owner *string, ref string) (store.Image, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return store.Image{}, errdefs.InvalidArgument("name an image")
	}
	notFound := errdefs.NotFoundf("no such image: %s", ref)
	if isUUID(ref) {
		if owner == nil {
			return s.Store.ImageByID(ctx, ref)
		}
		im, err := s.Store.GetImage(ctx, *owner, ref)
		if errdefs.Is(err, errdefs.NotFound) {
			return store.Image{}, notFound
		}
		return im, err
	}
	if i := strings.Index(ref, "@"); i >= 0 || strings.HasPrefix(ref, "sha256:") {
		dg, nm := ref, ""
		if i >= 0 {
			nm, dg = ref[:i], ref[i+1:]
		}
		if strings.HasPrefix(dg, "sha256:") {
			return s.imageByDigest(ctx, owner, dg, notFound)
		}
		ims, err := s.Store.ImagesByName(ctx, owner, nm, dg)
		if err != nil {
			return store.Image{}, err
		}
		if len(ims) == 0 {
			return store.Image{}, notFound
		}
		return ims[0], nil
	}
	explicitTag := strings.LastIndex(ref, ":") > strings.LastIndex(ref, "/")
	if repo, tag, err := ParseRepoTag(ref); err == nil {
		if owner != nil {
			t, err := s.Store.ImageTag(ctx, *owner, repo, tag)
			if err == nil {
				return s.Store.ImageByID(ctx, t.ImageID)
			} else if !errdefs.Is(err, errdefs.NotFound) {
				return store.Image{}, err
			}
		}
		version := ""
		if explicitTag {
			version = tag
		}
		ims, err := s.Store.ImagesByName(ctx, owner, repo, version)
		if err != nil {
			return store.Image{}, err
		}
		if len(ims) == 0 && !explicitTag && repo != ref {
			ims, err = s.Store.ImagesByName(ctx, owner, ref, "")
			if err != nil {
				return store.Image{}, err
			}
		}
		if len(ims) > 0 {
			return ims[0], nil
		}
	}
	if isIDLike(ref) {
		ims, err := s.Store.ImagesByIDPrefix(ctx, owner, ref)
		if err != nil {
			return store.Image{}, err
		}
		switch len(ims) {
		case 1:
			return ims[0], nil
		case 2:
			return store.Image{}, errdefs.InvalidArgument("image id prefix %s is ambiguous; give more of the id", ref)
		}
	}
	return store.Image{}, notFound
}

func (s *Service) imageByDigest(ctx context.Context, owner *string, dg string, notFound error) (store.Image, error) {
	if owner == nil {
		im, err := s.Store.ImageByDigest(ctx, dg)
		if errdefs.Is(err, errdefs.NotFound) {
			return store.Image{}, notFound
		}
		return im, err
	}
	im, err := s.Store.ImageByOwnerDigest(ctx, owner, dg)
	if err == nil {
		return im, nil
	} else if !errdefs.Is(err, errdefs.NotFound) {
		return store.Image{}, err
	}
	im, err = s.Store.ImageByDigest(ctx, dg)
	if err != nil {
		if errdefs.Is(err, errdefs.NotFound) {
			return store.Image{}, notFound
		}
		return store.Image{}, err
	}
	// Visible to owner?
	if _, err := s.Store.GetImage(ctx, *owner, im.ID); err != nil {
		return store.Image{}, notFound
	}
	return im, nil
}
