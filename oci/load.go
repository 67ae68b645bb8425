package oci

import (
	"errors"
	"io"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"flotilla/api/errdefs"
)

// refNameAnnotation names an image inside an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// LoadDockerArchive opens an image from a `docker save` tarball. tag selects
// one image of a multi-image archive (e.g. "busybox:1"); "" takes the only
// one. It returns NotFound for a missing file or tag, Invalid for a bad tag
// or archive.
func LoadDockerArchive(path, tag string) (v1.Image, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, errdefs.NotFoundf("image archive %s not found", path)
	}
	var t *name.Tag
	if tag != "" {
		parsed, err := name.NewTag(tag)
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Invalid, err, "image tag %q", tag)
		}
		t = &parsed
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Invalid, err, "read manifest of image archive %s", path)
		}
		found := false
		for _, d := range m {
			for _, rt := range d.RepoTags {
				if other, err := name.NewTag(rt); err == nil && other.Name() == parsed.Name() {
					found = true
				}
			}
		}
		if !found {
			return nil, errdefs.NotFoundf("image archive %s has no image tagged %s", path, tag)
		}
	}
	img, err := tarball.ImageFromPath(path, t)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read image archive %s", path)
	}
	// Read the manifest now so a broken archive fails here, not at unpack.
	if _, err := img.Manifest(); err != nil {
		if t != nil {
			return nil, errdefs.Wrap(errdefs.NotFound, err, "image %s in archive %s", tag, path)
		}
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read image archive %s", path)
	}
	return img, nil
}

// LoadOCILayout opens an image from an OCI image layout directory. ref
// matches the org.opencontainers.image.ref.name annotation of a manifest in
// the layout's index, or a manifest digest ("sha256:..."); "" takes the only
// manifest. It returns NotFound when nothing matches, Invalid when "" is
// ambiguous.
func LoadOCILayout(dir, ref string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.NotFound, err, "OCI layout %s", dir)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read index of OCI layout %s", dir)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read index of OCI layout %s", dir)
	}
	var match []v1.Descriptor
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		if ref == "" || d.Annotations[refNameAnnotation] == ref || d.Digest.String() == ref {
			match = append(match, d)
		}
	}
	switch {
	case len(match) == 0:
		return nil, errdefs.NotFoundf("no image %q in OCI layout %s", ref, dir)
	case len(match) > 1 && ref == "":
		return nil, errdefs.InvalidArgument("OCI layout %s holds %d images; name one", dir, len(match))
	}
	img, err := idx.Image(match[0].Digest)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errdefs.Wrap(errdefs.NotFound, err, "image %s in OCI layout %s", match[0].Digest, dir)
		}
		return nil, errdefs.Wrap(errdefs.Invalid, err, "image %s in OCI layout %s", match[0].Digest, dir)
	}
	return img, nil
}
