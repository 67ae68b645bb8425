package agent

// RegistryImageSource also imports flotilla/oci (the blob cache) and
// go-containerregistry; agent.go's package doc should list them.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/oci"
)

// ImageSourceConfig configures a RegistryImageSource.
type ImageSourceConfig struct {
	// CacheDir keeps fetched blobs by digest (an oci.DirStore), so a second
	// instance of an image, or one after an agent restart, reads them
	// locally. Required.
	CacheDir string
	// Credential returns the node credential sent as a bearer token. When nil,
	// it is read from DataDir/node.json at each fetch (so a re-registration
	// is picked up).
	Credential func() string
	// DataDir is the agent's data dir, for the default Credential.
	DataDir string
	// HTTPClient's transport is used for registry requests; default
	// NewHTTPClient().
	HTTPClient *http.Client
}

// RegistryImageSource is a driver.ImageSource that pulls images from the
// control plane's OCI distribution endpoint (driver.Image.Ref, plain HTTP
// as the agent API itself) with the node credential, verifies the manifest
// digest and every blob, and caches blobs by digest.
type RegistryImageSource struct {
	cfg    ImageSourceConfig
	cache  *oci.DirStore
	client *http.Client

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per manifest digest: one fetch at a time
}

var _ driver.ImageSource = (*RegistryImageSource)(nil)

// NewImageSource returns an image source caching under cfg.CacheDir. It
// returns Invalid without a cache dir or a way to find the credential.
func NewImageSource(cfg ImageSourceConfig) (*RegistryImageSource, error) {
	if cfg.CacheDir == "" {
		return nil, errdefs.InvalidArgument("agent: image source needs a cache directory")
	}
	if cfg.Credential == nil {
		if cfg.DataDir == "" {
			return nil, errdefs.InvalidArgument("agent: image source needs the node credential or the agent data dir holding it")
		}
		dir := cfg.DataDir
		cfg.Credential = func() string { return savedCredential(dir) }
	}
	cache, err := oci.NewDirStore(cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	c := cfg.HTTPClient
	if c == nil {
		c = NewHTTPClient()
	}
	return &RegistryImageSource{cfg: cfg, cache: cache, client: c, locks: map[string]*sync.Mutex{}}, nil
}

// savedCredential reads the credential Client saved in dataDir.
func savedCredential(dataDir string) string {
	b, err := os.ReadFile(filepath.Join(dataDir, NodeFileName))
	if err != nil {
		return ""
	}
	var nf nodeFile
	if json.Unmarshal(b, &nf) != nil {
		return ""
	}
	return nf.Credential
}

func (s *RegistryImageSource) lock(key string) func() {
	s.mu.Lock()
	l := s.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[key] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Image implements driver.ImageSource. It returns NotFound when the image
// has no content in the control plane or the registry does not have it,
// Invalid for a bad reference or content that does not match its digest,
// Unauthorized when the node credential is refused, Unavailable when the
// control plane cannot be reached.
func (s *RegistryImageSource) Image(ctx context.Context, img driver.Image) (v1.Image, error) {
	if img.Ref == "" {
		return nil, errdefs.NotFoundf("image %s has no content to pull (recorded without blobs; import it again)", img.ID)
	}
	ref, err := name.ParseReference(img.Ref, name.Insecure)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "image %s: bad reference %q", img.ID, img.Ref)
	}
	want := img.Digest
	if d, ok := ref.(name.Digest); ok {
		if want != "" && want != d.DigestStr() {
			return nil, errdefs.InvalidArgument("image %s: reference %s does not carry the expected digest %s", img.ID, img.Ref, want)
		}
		want = d.DigestStr()
	}
	if want == "" {
		return nil, errdefs.InvalidArgument("image %s: reference %s has no digest to verify", img.ID, img.Ref)
	}
	h, err := v1.NewHash(want)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "image %s: digest %q", img.ID, want)
	}
	defer s.lock(h.String())()
	if im, err := s.cached(ctx, h); err == nil {
		return im, nil
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(s.client.Transport)}
	if tok := s.cfg.Credential(); tok != "" {
		opts = append(opts, remote.WithAuth(&authn.Bearer{Token: tok}))
	}
	rimg, err := remote.Image(ref, opts...)
	if err != nil {
		return nil, pullErr(err, img)
	}
	if got, err := rimg.Digest(); err != nil || got != h {
		return nil, errdefs.New(errdefs.Invalid, "image %s: the registry served manifest %s, want %s", img.ID, got, h)
	}
	if err := s.fill(ctx, rimg, h); err != nil {
		return nil, pullErr(err, img)
	}
	return s.cached(ctx, h)
}

// fill copies the layers and config of rimg, then its manifest, into the
// cache; the cache verifies each digest as it writes.
func (s *RegistryImageSource) fill(ctx context.Context, rimg v1.Image, h v1.Hash) error {
	m, err := rimg.Manifest()
	if err != nil {
		return err
	}
	for _, d := range m.Layers {
		if _, err := s.cache.Stat(ctx, d.Digest); err == nil {
			continue
		}
		l, err := rimg.LayerByDigest(d.Digest)
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		err = s.cache.Put(ctx, d.Digest, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	cfg, err := rimg.RawConfigFile()
	if err != nil {
		return err
	}
	if err := s.cache.Put(ctx, m.Config.Digest, bytes.NewReader(cfg)); err != nil {
		return err
	}
	raw, err := rimg.RawManifest()
	if err != nil {
		return err
	}
	return s.cache.Put(ctx, h, bytes.NewReader(raw))
}

// cached opens an image whose manifest, config and layers are all in the
// cache; NotFound otherwise.
func (s *RegistryImageSource) cached(ctx context.Context, h v1.Hash) (v1.Image, error) {
	return oci.BlobImage(ctx, s.cache, h, true)
}

// pullErr turns a registry failure into an errdefs error naming the image.
func pullErr(err error, img driver.Image) error {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return errdefs.Wrap(errdefs.NotFound, err, "image %s is not in the control plane's registry (%s)", img.ID, img.Ref)
		case http.StatusUnauthorized, http.StatusForbidden:
			return errdefs.Wrap(errdefs.Unauthorized, err, "image %s: the control plane refused the node credential", img.ID)
		}
	}
	msg := err.Error()
	if strings.Contains(msg, "digest") || strings.Contains(msg, "hashes to") {
		return errdefs.Wrap(errdefs.Invalid, err, "image %s: content does not match its digest: %v", img.ID, err)
	}
	return errdefs.Wrap(errdefs.Unavailable, err, "image %s: pull from %s failed: %v", img.ID, img.Ref, err)
}
