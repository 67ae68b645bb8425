package service

// Images from instances (`docker commit`, CloudAPI CreateImageFromMachine):
// the node that runs the instance reads what it changed (its overlay's
// upper directory) as an OCI layer, and the new image is the instance's
// image with that layer on top. The node's tar is compressed once into a
// spool file, checked, and then written like any other image, so the blob
// tenancy rules hold: the base image's layers are named without their
// bytes only when the account can still see an image holding them, and the
// new layer's bytes come from the account's own instance.
//
// This file also imports api/nodeclient (a client of agents' stream
// servers) and agent/driver's brand names.

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/store"
)

// SetNodeClient sets the client CommitInstance reaches nodes' stream
// servers with (TLS with the node CA in `serve`). Without one, a plain
// HTTP client is used, as tests run stream servers.
func (s *Service) SetNodeClient(c *nodeclient.Client) { s.nodes = c }

var plainNodes = nodeclient.New()

func (s *Service) nodeClient() *nodeclient.Client {
	if s.nodes != nil {
		return s.nodes
	}
	return plainNodes
}

// CommitOptions describe the image CommitInstance makes.
type CommitOptions struct {
	// Meta names the image (its Config is ignored); Type defaults to the
	// type of the instance's image.
	Meta ImageMeta
	// Config, when set, is the new image's runtime configuration; nil
	// keeps the instance's image's.
	Config *v1.Config
	// Author, Comment and CreatedBy go into the image's history.
	Author, Comment, CreatedBy string
}

// CommitInstance makes an image, owned by owner, of owner's instance in:
// the layers of the image it was created from and, on top, what it
// changed. It returns Invalid for a VM (only containers keep their changes
// apart), a bad name, or an instance whose image owner can no longer see;
// Conflict when the instance has no node or is not on it yet; Unavailable
// when the node cannot be reached; NotImplemented when the node keeps no
// record of the changes. Nothing is recorded on failure.
func (s *Service) CommitInstance(ctx context.Context, owner string, in store.Instance, opts CommitOptions) (store.Image, error) {
	im, _, err := s.CommitInstanceNew(ctx, owner, in, opts)
	return im, err
}

// CommitInstanceNew is CommitInstance that also tells whether the image is
// new: false when owner already had an image of the same content, which
// the row returned is.
func (s *Service) CommitInstanceNew(ctx context.Context, owner string, in store.Instance, opts CommitOptions) (store.Image, bool, error) {
	if in.OwnerID != owner {
		return store.Image{}, false, errdefs.NotFoundf("instance %s not found", in.ID)
	}
	if in.Brand == driver.BrandBhyve || in.Brand == driver.BrandKVM {
		return store.Image{}, false, errdefs.InvalidArgument("instance %s is a virtual machine (%s): images can be made only from container instances",
			in.ID, in.Brand)
	}
	if in.NodeID == nil || *in.NodeID == "" {
		return store.Image{}, false, errdefs.Conflictf("instance %s has no node: it was never placed", in.ID)
	}
	if _, err := s.Blobs(); err != nil {
		return store.Image{}, false, err
	}
	baseRow, err := s.Store.ImageByID(ctx, in.ImageID)
	if err != nil {
		return store.Image{}, false, errdefs.Wrap(errdefs.Invalid, err, "the image %s of instance %s no longer exists", in.ImageID, in.ID)
	}
	base, err := s.OCIImage(ctx, in.ImageID)
	if err != nil {
		return store.Image{}, false, errdefs.Wrap(errdefs.Invalid, err, "the image %s of instance %s has no content", in.ImageID, in.ID)
	}
	m, err := base.Manifest()
	if err != nil {
		return store.Image{}, false, imageErr(err, "read the manifest of image %s", in.ImageID)
	}
	// The new manifest names the base layers without carrying their bytes:
	// allowed only while owner can see an image that holds them.
	for _, l := range m.Layers {
		ok, err := s.Store.LayerVisible(ctx, &owner, l.Digest.String())
		if err != nil {
			return store.Image{}, false, err
		}
		if !ok {
			return store.Image{}, false, errdefs.InvalidArgument("the image %s (%s) instance %s was created from is no longer available to this account",
				baseRow.ID, baseRow.Name, in.ID)
		}
	}
	if opts.Meta.Type == "" {
		opts.Meta.Type = baseRow.Type
	}
	if opts.Meta.OS == "" {
		opts.Meta.OS = baseRow.OS
	}
	if opts.Meta.Requirements == nil {
		opts.Meta.Requirements = baseRow.Requirements
	}
	if err := validateMeta(&opts.Meta, ImageTypeDocker); err != nil {
		return store.Image{}, false, err
	}
	ns, err := s.Store.NodeStream(ctx, *in.NodeID)
	if err != nil {
		return store.Image{}, false, err
	}
	node := nodeclient.Node{ID: ns.NodeID, Address: ns.Address, Token: ns.Token}
	spool, err := s.spoolLayer(ctx, node, in.ID)
	if err != nil {
		return store.Image{}, false, err
	}
	defer os.Remove(spool)
	im, existed, err := s.imageOnTop(ctx, owner, base, spool, opts.Config, v1.History{CreatedBy: opts.CreatedBy,
		Author: opts.Author, Comment: opts.Comment}, opts.Meta)
	if err != nil {
		return store.Image{}, false, err
	}
	s.Log.Info("image committed", "account", owner, "instance", in.ID, "image", im.ID, "base", baseRow.ID, "digest", im.ManifestDigest)
	return im, !existed, nil
}

// spoolLayer reads the instance's changes from its node, checks that they
// are a whole tar, and writes them gzip'd to a temporary file whose path it
// returns (the caller removes it).
func (s *Service) spoolLayer(ctx context.Context, node nodeclient.Node, id string) (string, error) {
	rc, err := s.nodeClient().Layer(ctx, node, id)
	if err != nil {
		switch {
		case errdefs.Is(err, errdefs.NotFound):
			return "", errdefs.Wrap(errdefs.Conflict, err, "instance %s is not on its node yet (or any more)", id)
		}
		return "", err
	}
	defer rc.Close()
	f, err := os.CreateTemp("", "flotilla-commit-*")
	if err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "spool the changes of %s", id)
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(f.Name())
		}
	}()
	max := s.imagePolicy.MaxLayerBytes
	zw, _ := gzip.NewWriterLevel(&limitWriter{w: f, max: max}, gzip.BestSpeed)
	if _, err := io.Copy(zw, rc); err != nil {
		if errors.Is(err, errLayerTooBig) {
			return "", errdefs.InvalidArgument("the changes of instance %s are larger than the %d bytes (compressed) a layer may hold", id, max)
		}
		return "", errdefs.Wrap(errdefs.Unavailable, err, "read the changes of instance %s from its node", id)
	}
	if err := zw.Close(); err != nil {
		if errors.Is(err, errLayerTooBig) {
			return "", errdefs.InvalidArgument("the changes of instance %s are larger than the %d bytes a layer may hold", id, max)
		}
		return "", errdefs.Wrap(errdefs.Internal, err, "spool the changes of %s", id)
	}
	if err := f.Close(); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "spool the changes of %s", id)
	}
	if err := checkTar(f.Name()); err != nil {
		return "", errdefs.Wrap(errdefs.Unavailable, err, "the node sent a damaged tar of the changes of %s", id)
	}
	ok = true
	return f.Name(), nil
}

var errLayerTooBig = errors.New("layer too big")

// limitWriter fails once more than max bytes (0: no limit) were written.
type limitWriter struct {
	w   io.Writer
	n   int64
	max int64
}

func (l *limitWriter) Write(b []byte) (int, error) {
	l.n += int64(len(b))
	if l.max > 0 && l.n > l.max {
		return 0, errLayerTooBig
	}
	return l.w.Write(b)
}

// DefaultCreatedBy is the history line of a committed image: the command
// the instance ran.
func DefaultCreatedBy(p ProcessSpec) string {
	return strings.TrimSpace(strings.Join(append(append([]string{}, p.Entrypoint...), p.Cmd...), " "))
}
