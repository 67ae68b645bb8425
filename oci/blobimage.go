package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/errdefs"
)

// MaxManifestSize bounds the manifests and configs ReadSmallBlob reads.
const MaxManifestSize = 4 << 20

// ReadSmallBlob reads a manifest or config blob and checks its digest. A
// blob that does not match is reported as NotFound (damaged content is as
// good as missing, and callers fetch it again).
func ReadSmallBlob(ctx context.Context, blobs BlobStore, dgst v1.Hash) ([]byte, error) {
	rc, err := blobs.Get(ctx, dgst)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, MaxManifestSize+1))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "reading blob %s", dgst)
	}
	if len(b) > MaxManifestSize {
		return nil, errdefs.New(errdefs.Invalid, "blob %s is larger than %d bytes", dgst, MaxManifestSize)
	}
	if sum := sha256.Sum256(b); dgst.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != dgst.Hex {
		return nil, errdefs.NotFoundf("blob %s is damaged: it does not match its digest", dgst)
	}
	return b, nil
}

// BlobImage opens the image whose manifest is the blob dgst; its config and
// layers are read from the same store when asked for. With requireLayers, a
// missing layer is NotFound at once rather than on first use.
func BlobImage(ctx context.Context, blobs BlobStore, dgst v1.Hash, requireLayers bool) (v1.Image, error) {
	raw, err := ReadSmallBlob(ctx, blobs, dgst)
	if err != nil {
		return nil, err
	}
	var m v1.Manifest
	if err := json.NewDecoder(bytes.NewReader(raw)).Decode(&m); err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "manifest %s is not valid JSON", dgst)
	}
	cfg, err := ReadSmallBlob(ctx, blobs, m.Config.Digest)
	if err != nil {
		return nil, err
	}
	if requireLayers {
		for _, d := range m.Layers {
			if _, err := blobs.Stat(ctx, d.Digest); err != nil {
				return nil, err
			}
		}
	}
	return partial.CompressedToImage(&blobImage{ctx: context.WithoutCancel(ctx), blobs: blobs, raw: raw, manifest: &m, config: cfg})
}

// blobImage is a partial.CompressedImageCore over a blob store.
type blobImage struct {
	ctx      context.Context
	blobs    BlobStore
	raw      []byte
	manifest *v1.Manifest
	config   []byte
}

func (i *blobImage) RawManifest() ([]byte, error)   { return i.raw, nil }
func (i *blobImage) RawConfigFile() ([]byte, error) { return i.config, nil }

func (i *blobImage) MediaType() (types.MediaType, error) {
	if i.manifest.MediaType == "" {
		return types.OCIManifestSchema1, nil
	}
	return i.manifest.MediaType, nil
}

func (i *blobImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range append([]v1.Descriptor{i.manifest.Config}, i.manifest.Layers...) {
		if d.Digest == h {
			return &blobLayer{i, d}, nil
		}
	}
	return nil, errdefs.NotFoundf("blob %s is not part of this image", h)
}

type blobLayer struct {
	img  *blobImage
	desc v1.Descriptor
}

func (l *blobLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *blobLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return l.img.blobs.Get(l.img.ctx, l.desc.Digest)
}
