package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/oci"
)

// testRegistry is go-containerregistry's in-memory registry behind a bearer
// check, counting the requests that reach it.
type testRegistry struct {
	srv      *httptest.Server
	host     string
	requests atomic.Int64
}

func newTestRegistry(t *testing.T, token string) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/v2/" {
			tr.requests.Add(1)
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

func testImage(t *testing.T, content string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
	tw.Write([]byte(content))
	tw.Close()
	img, err := oci.ImageFromLayerTars(v1.Config{Cmd: []string{"/bin/true"}}, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// push writes img to the registry and returns the driver.Image an
// assignment would carry for it.
func (tr *testRegistry) push(t *testing.T, token, id string, img v1.Image) driver.Image {
	t.Helper()
	ref, err := name.ParseReference(tr.host+"/images/"+id+":latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Bearer{Token: token})); err != nil {
		t.Fatalf("push: %v", err)
	}
	d, _ := img.Digest()
	tr.requests.Store(0)
	return driver.Image{ID: id, Ref: tr.host + "/images/" + id + "@" + d.String(), Digest: d.String(), Type: "zone-dataset"}
}

func motd(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	if err := oci.UnpackImage(context.Background(), img, dir); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "etc/motd"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRegistryImageSource(t *testing.T) {
	ctx := context.Background()
	tr := newTestRegistry(t, "node-secret")
	want := testImage(t, "hello from the registry\n")
	di := tr.push(t, "node-secret", "11111111-2222-4333-8444-555555555555", want)
	cache := t.TempDir()

	src, err := NewImageSource(ImageSourceConfig{CacheDir: cache, Credential: func() string { return "node-secret" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("OK", func(t *testing.T) {
		got, err := src.Image(ctx, di)
		if err != nil {
			t.Fatalf("Image: %v", err)
		}
		if d, _ := got.Digest(); d.String() != di.Digest {
			t.Errorf("digest %s, want %s", d, di.Digest)
		}
		if s := motd(t, got); s != "hello from the registry\n" {
			t.Errorf("motd %q", s)
		}
		if tr.requests.Load() == 0 {
			t.Error("no request reached the registry")
		}
	})
	t.Run("CachedSecondTime", func(t *testing.T) {
		before := tr.requests.Load()
		got, err := src.Image(ctx, di)
		if err != nil {
			t.Fatal(err)
		}
		motd(t, got)
		// An agent restart: a new source over the same cache.
		src2, err := NewImageSource(ImageSourceConfig{CacheDir: cache, Credential: func() string { return "wrong" }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := src2.Image(ctx, di); err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if n := tr.requests.Load() - before; n != 0 {
			t.Errorf("%d registry requests for a cached image, want 0", n)
		}
	})
	t.Run("ErrCredentialRefused", func(t *testing.T) {
		other := tr.push(t, "node-secret", "22222222-2222-4333-8444-555555555555", testImage(t, "other\n"))
		bad, _ := NewImageSource(ImageSourceConfig{CacheDir: t.TempDir(), Credential: func() string { return "wrong" }})
		_, err := bad.Image(ctx, other)
		if !errdefs.Is(err, errdefs.Unauthorized) {
			t.Errorf("err = %v, want Unauthorized", err)
		}
	})
	t.Run("CredentialFromDataDir", func(t *testing.T) {
		dir := t.TempDir()
		b, _ := json.Marshal(nodeFile{NodeID: "n", Credential: "node-secret"})
		os.WriteFile(filepath.Join(dir, NodeFileName), b, 0o600)
		s, err := NewImageSource(ImageSourceConfig{CacheDir: t.TempDir(), DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Image(ctx, di); err != nil {
			t.Errorf("Image: %v", err)
		}
	})
	t.Run("ErrDigestMismatch", func(t *testing.T) {
		d := di
		d.Digest = "sha256:" + strings.Repeat("0", 64)
		if _, err := src.Image(ctx, d); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
	t.Run("ErrUnknownManifest", func(t *testing.T) {
		d := di
		d.Digest = "sha256:" + strings.Repeat("1", 64)
		d.Ref = tr.host + "/images/" + di.ID + "@" + d.Digest
		if _, err := src.Image(ctx, d); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("err = %v, want NotFound", err)
		}
	})
	t.Run("ErrNoContent", func(t *testing.T) {
		if _, err := src.Image(ctx, driver.Image{ID: "x"}); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("err = %v, want NotFound", err)
		}
	})
	t.Run("ErrNoCacheDir", func(t *testing.T) {
		if _, err := NewImageSource(ImageSourceConfig{DataDir: "x"}); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
}
