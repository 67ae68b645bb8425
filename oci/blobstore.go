// Package oci handles OCI images on a node: a content-addressed blob store,
// safe unpacking of image layers into a root filesystem, loaders for
// docker-save archives and OCI layouts, and a tiny busybox image built from
// the host's static busybox for tests and demos.
//
// Imports: standard library, api/errdefs, go-containerregistry and
// cyphar/filepath-securejoin. It never imports store, api or agent.
package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/api/errdefs"
)

// BlobStore keeps blobs (layers, configs, manifests) by their sha256 digest.
// Implementations verify content on write, so a blob that can be read is
// always the blob its digest names.
type BlobStore interface {
	// Put stores the content of r under dgst. It returns Invalid if the
	// content does not hash to dgst (nothing is stored then). Putting a blob
	// that exists stores nothing but still reads and verifies r, so a caller
	// cannot claim a digest without holding its bytes.
	Put(ctx context.Context, dgst v1.Hash, r io.Reader) error
	// Get opens the blob; NotFound if it is not stored.
	Get(ctx context.Context, dgst v1.Hash) (io.ReadCloser, error)
	// Stat returns the blob's size; NotFound if it is not stored.
	Stat(ctx context.Context, dgst v1.Hash) (int64, error)
	// Delete removes the blob; deleting a missing blob is not an error.
	Delete(ctx context.Context, dgst v1.Hash) error
}

// DirStore is a BlobStore in a local directory: blobs live at
// <root>/sha256/<hex>, written to <root>/tmp first and renamed into place, so
// a crash never leaves a partial blob under its digest.
type DirStore struct {
	root string
}

var _ BlobStore = (*DirStore)(nil)

// NewDirStore opens (creating if needed) a blob store rooted at root.
func NewDirStore(root string) (*DirStore, error) {
	for _, d := range []string{"sha256", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "create blob store directory %s", root)
		}
	}
	return &DirStore{root: root}, nil
}

func (s *DirStore) path(dgst v1.Hash) (string, error) {
	if dgst.Algorithm != "sha256" || len(dgst.Hex) != 64 {
		return "", errdefs.InvalidArgument("digest %q is not a sha256 digest", dgst.String())
	}
	if _, err := hex.DecodeString(dgst.Hex); err != nil {
		return "", errdefs.InvalidArgument("digest %q is not hexadecimal", dgst.String())
	}
	return filepath.Join(s.root, "sha256", dgst.Hex), nil
}

// Put implements BlobStore.
func (s *DirStore) Put(ctx context.Context, dgst v1.Hash, r io.Reader) error {
	p, err := s.path(dgst)
	if err != nil {
		return err
	}
	if _, err := os.Stat(p); err == nil {
		h := sha256.New()
		if _, err := io.Copy(h, ctxReader{ctx, r}); err != nil {
			return copyErr(err, "read blob %s", dgst)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != dgst.Hex {
			return errdefs.InvalidArgument("blob content hashes to sha256:%s, not %s", got, dgst)
		}
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Join(s.root, "tmp"), dgst.Hex[:12]+"-*")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create temporary blob file")
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), ctxReader{ctx, r}); err != nil {
		return copyErr(err, "write blob %s", dgst)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != dgst.Hex {
		return errdefs.InvalidArgument("blob content hashes to sha256:%s, not %s", got, dgst)
	}
	if err := tmp.Sync(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "sync blob %s", dgst)
	}
	if err := tmp.Close(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "close blob %s", dgst)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "store blob %s", dgst)
	}
	return nil
}

// Get implements BlobStore.
func (s *DirStore) Get(_ context.Context, dgst v1.Hash) (io.ReadCloser, error) {
	p, err := s.path(dgst)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.NotFoundf("blob %s is not in the store", dgst)
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "open blob %s", dgst)
	}
	return f, nil
}

// Stat implements BlobStore.
func (s *DirStore) Stat(_ context.Context, dgst v1.Hash) (int64, error) {
	p, err := s.path(dgst)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, errdefs.NotFoundf("blob %s is not in the store", dgst)
	}
	if err != nil {
		return 0, errdefs.Wrap(errdefs.Internal, err, "stat blob %s", dgst)
	}
	return fi.Size(), nil
}

// Delete implements BlobStore.
func (s *DirStore) Delete(_ context.Context, dgst v1.Hash) error {
	p, err := s.path(dgst)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return errdefs.Wrap(errdefs.Internal, err, "delete blob %s", dgst)
	}
	return nil
}

// copyErr keeps the code of an errdefs error from the source (a body over
// its limit, say) and calls anything else Internal.
func copyErr(err error, format string, args ...any) error {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return err
	}
	return errdefs.Wrap(errdefs.Internal, err, format, args...)
}

// ctxReader stops a long copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, fmt.Errorf("copy cancelled: %w", err)
	}
	return c.r.Read(p)
}
