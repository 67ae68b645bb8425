package agentapi_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/uuid"

	"flotilla/agent"
	"flotilla/agent/driver"
	"flotilla/api/agentapi"
	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/oci"
	"flotilla/store"
	"flotilla/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

type registryEnv struct {
	url   string // http://127.0.0.1:port
	host  string
	cred  string // node n1's, which runs instances of image and empty
	image store.Image
	img   v1.Image
	empty store.Image // a record without content

	st    *store.Store
	svc   *service.Service
	node  store.Node // n1
	owner store.Account
	net   store.Network
}

// assign places an instance of image on node, which lets the node pull it.
func (e registryEnv) assign(t testing.TB, node store.Node, image store.Image) store.Instance {
	t.Helper()
	in, _, err := e.st.CreateInstance(context.Background(), store.NewInstance{
		Instance: store.Instance{ID: uuid.NewString(), OwnerID: e.owner.ID, Name: "i-" + uuid.NewString()[:8], Brand: "joyent-minimal",
			ImageID: image.ID, MemoryMiB: 64, DiskMiB: 64, VCPUsMilli: 100},
		Networks: []string{e.net.ID}, Candidates: []string{node.ID},
	})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func newRegistryEnv(t *testing.T) registryEnv {
	t.Helper()
	ctx := context.Background()
	st := storetest.New(t)
	blobs, err := oci.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	svc := &service.Service{Store: st, Log: log}
	svc.SetBlobs(blobs)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6})
	tw.Write([]byte("hello\n"))
	tw.Close()
	img, err := oci.ImageFromLayerTars(v1.Config{Cmd: []string{"/bin/sh"}}, layer.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	im, err := svc.ImportImage(ctx, nil, img, service.ImageMeta{Name: "hello", Version: "1", Public: true})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := st.CreateImage(ctx, store.Image{Name: "empty", Version: "1", OS: "linux", Type: "zvol"})
	if err != nil {
		t.Fatal(err)
	}
	cred := agentapi.NewToken()
	node, err := st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Driver: "sim", Brands: []string{"joyent-minimal"},
		MemoryMiB: 1024, DiskMiB: 1024, VCPUsMilli: 1000}, agentapi.HashToken(cred))
	if err != nil {
		t.Fatal(err)
	}
	owner, err := st.CreateAccount(ctx, store.Account{Login: "alice", Email: "alice@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	net, err := st.CreateNetwork(ctx, store.Network{Name: "net", Public: true, Subnet: "10.77.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	s := agentapi.New(st, log)
	s.SetBlobs(blobs)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	e := registryEnv{url: srv.URL, host: strings.TrimPrefix(srv.URL, "http://"), cred: cred, image: im, img: img, empty: empty,
		st: st, svc: svc, node: node, owner: owner, net: net}
	e.assign(t, node, im)
	e.assign(t, node, empty)
	return e
}

func (e registryEnv) do(t *testing.T, method, path, cred string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, nil)
	if cred != "" {
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// distCode returns the first error code of a distribution error body.
func distCode(t *testing.T, b []byte) string {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(b, &body); err != nil || len(body.Errors) == 0 {
		t.Fatalf("not a distribution error body: %s", b)
	}
	return body.Errors[0].Code
}

func TestRegistryPull(t *testing.T) {
	e := newRegistryEnv(t)
	ref, err := name.ParseReference(e.host+"/images/"+e.image.ID+"@"+e.image.ManifestDigest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("OK", func(t *testing.T) {
		img, err := remote.Image(ref, remote.WithAuth(&authn.Bearer{Token: e.cred}))
		if err != nil {
			t.Fatalf("remote.Image: %v", err)
		}
		if d, _ := img.Digest(); d.String() != e.image.ManifestDigest {
			t.Errorf("digest %s, want %s", d, e.image.ManifestDigest)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("layers %d, %v", len(layers), err)
		}
		rc, err := layers[0].Compressed() // verified against its digest while read
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Errorf("read layer: %v", err)
		}
		rc.Close()
	})
	t.Run("ErrNoCredential", func(t *testing.T) {
		_, err := remote.Image(ref)
		if err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "UNAUTHORIZED") {
			t.Errorf("anonymous pull: %v, want 401", err)
		}
	})
}

func TestRegistryEndpoints(t *testing.T) {
	e := newRegistryEnv(t)
	m, _ := e.img.Manifest()
	mpath := "/v2/images/" + e.image.ID + "/manifests/"
	bpath := "/v2/images/" + e.image.ID + "/blobs/"
	t.Run("Base", func(t *testing.T) {
		resp, b := e.do(t, "GET", "/v2/", e.cred)
		if resp.StatusCode != 200 || string(b) != "{}" || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Errorf("GET /v2/: %d %q %v", resp.StatusCode, b, resp.Header)
		}
		resp, _ = e.do(t, "HEAD", "/v2/", e.cred)
		if resp.StatusCode != 200 {
			t.Errorf("HEAD /v2/: %d", resp.StatusCode)
		}
	})
	t.Run("ErrUnauthorized", func(t *testing.T) {
		for _, cred := range []string{"", "not-a-node"} {
			resp, b := e.do(t, "GET", "/v2/", cred)
			if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" || distCode(t, b) != "UNAUTHORIZED" {
				t.Errorf("credential %q: %d %v %s", cred, resp.StatusCode, resp.Header, b)
			}
			resp, _ = e.do(t, "GET", mpath+e.image.ManifestDigest, cred)
			if resp.StatusCode != 401 {
				t.Errorf("manifest with credential %q: %d", cred, resp.StatusCode)
			}
		}
	})
	t.Run("Manifest", func(t *testing.T) {
		raw, _ := e.img.RawManifest()
		for _, ref := range []string{e.image.ManifestDigest, "latest"} {
			for _, method := range []string{"GET", "HEAD"} {
				resp, b := e.do(t, method, mpath+ref, e.cred)
				if resp.StatusCode != 200 {
					t.Fatalf("%s %s: %d %s", method, ref, resp.StatusCode, b)
				}
				if ct := resp.Header.Get("Content-Type"); ct != string(m.MediaType) {
					t.Errorf("Content-Type %q, want %q", ct, m.MediaType)
				}
				if resp.Header.Get("Docker-Content-Digest") != e.image.ManifestDigest {
					t.Errorf("Docker-Content-Digest %q", resp.Header.Get("Docker-Content-Digest"))
				}
				if resp.Header.Get("Content-Length") != strconv.Itoa(len(raw)) {
					t.Errorf("Content-Length %q, want %d", resp.Header.Get("Content-Length"), len(raw))
				}
				if method == "GET" && !bytes.Equal(b, raw) {
					t.Errorf("manifest body differs from the image's manifest")
				}
			}
		}
	})
	t.Run("Blob", func(t *testing.T) {
		for _, d := range []v1.Descriptor{m.Config, m.Layers[0]} {
			resp, b := e.do(t, "GET", bpath+d.Digest.String(), e.cred)
			if resp.StatusCode != 200 || int64(len(b)) != d.Size || resp.Header.Get("Docker-Content-Digest") != d.Digest.String() ||
				resp.Header.Get("Content-Type") != "application/octet-stream" {
				t.Errorf("GET blob %s: %d, %d bytes, %v", d.Digest, resp.StatusCode, len(b), resp.Header)
			}
			resp, _ = e.do(t, "HEAD", bpath+d.Digest.String(), e.cred)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != strconv.FormatInt(d.Size, 10) {
				t.Errorf("HEAD blob %s: %d %v", d.Digest, resp.StatusCode, resp.Header)
			}
		}
	})
	tests := []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"ErrUnknownImage", "GET", "/v2/images/00000000-0000-4000-8000-000000000000/manifests/latest", 404, "NAME_UNKNOWN"},
		{"ErrNotUUID", "GET", "/v2/images/nope/manifests/latest", 404, "NAME_UNKNOWN"},
		{"ErrImageWithoutContent", "GET", "/v2/images/" + e.empty.ID + "/manifests/latest", 404, "NAME_UNKNOWN"},
		{"ErrOtherManifest", "GET", mpath + "sha256:" + strings.Repeat("a", 64), 404, "MANIFEST_UNKNOWN"},
		{"ErrBlobOfNoImage", "GET", bpath + "sha256:" + strings.Repeat("b", 64), 404, "BLOB_UNKNOWN"},
		{"ErrBadDigest", "GET", bpath + "md5:xyz", 400, "DIGEST_INVALID"},
		{"ErrOtherRepository", "GET", "/v2/library/busybox/manifests/latest", 404, "NAME_UNKNOWN"},
		{"ErrReadOnly", "PUT", mpath + "latest", 405, "UNSUPPORTED"},
		{"ErrNoUploads", "POST", "/v2/images/" + e.image.ID + "/blobs/uploads/", 404, "NAME_UNKNOWN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := e.do(t, tc.method, tc.path, e.cred)
			if resp.StatusCode != tc.status || distCode(t, b) != tc.code {
				t.Errorf("%s %s: %d %s; want %d %s", tc.method, tc.path, resp.StatusCode, b, tc.status, tc.code)
			}
		})
	}
	t.Run("ErrBlobNotPartOfImage", func(t *testing.T) {
		// A blob of another image is not served under this one.
		other := newRegistryEnv(t)
		resp, b := other.do(t, "GET", "/v2/images/"+other.empty.ID+"/blobs/"+m.Layers[0].Digest.String(), other.cred)
		if resp.StatusCode != 404 {
			t.Errorf("%d %s", resp.StatusCode, b)
		}
	})
}

// TestRegistryOtherNodesImages: a node reads the images of its own
// assignments only. Node n2, which runs nothing of alice's, asks for her
// private image's manifest and blobs, which only n1 runs.
func TestRegistryOtherNodesImages(t *testing.T) {
	e := newRegistryEnv(t)
	ctx := context.Background()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "etc/secret", Typeflag: tar.TypeReg, Mode: 0o600, Size: 7})
	tw.Write([]byte("s3cret\n"))
	tw.Close()
	img, err := oci.ImageFromLayerTars(v1.Config{Env: []string{"API_KEY=alice"}}, layer.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	private, err := e.svc.ImportImage(ctx, &e.owner.ID, img, service.ImageMeta{Name: "private", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	e.assign(t, e.node, private)
	cred2 := agentapi.NewToken()
	if _, err := e.st.RegisterNode(ctx, store.NodeRegistration{Name: "n2", Driver: "sim", MemoryMiB: 1024, DiskMiB: 1024, VCPUsMilli: 1000},
		agentapi.HashToken(cred2)); err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	paths := []string{"/v2/images/" + private.ID + "/manifests/" + private.ManifestDigest, "/v2/images/" + private.ID + "/manifests/latest",
		"/v2/images/" + private.ID + "/blobs/" + m.Config.Digest.String(), "/v2/images/" + private.ID + "/blobs/" + m.Layers[0].Digest.String()}
	for _, p := range paths {
		if resp, b := e.do(t, "GET", p, e.cred); resp.StatusCode != http.StatusOK {
			t.Errorf("n1, which runs the image: GET %s: %d %s", p, resp.StatusCode, b)
		}
		resp, b := e.do(t, "GET", p, cred2)
		if resp.StatusCode != http.StatusNotFound || distCode(t, b) != "NAME_UNKNOWN" {
			t.Errorf("n2, which does not: GET %s: %d %s, want 404 NAME_UNKNOWN", p, resp.StatusCode, b)
		}
	}
	// Not even the public image: n2 has no instance of it either.
	if resp, b := e.do(t, "GET", "/v2/images/"+e.image.ID+"/manifests/latest", cred2); resp.StatusCode != http.StatusNotFound {
		t.Errorf("n2 reads an image it does not run: %d %s", resp.StatusCode, b)
	}
}

// TestAgentImageSource fetches an image the way an agent does: the image
// source of package agent against the real agent API handler.
func TestAgentImageSource(t *testing.T) {
	e := newRegistryEnv(t)
	ctx := context.Background()
	di := driver.Image{ID: e.image.ID, Ref: e.host + "/images/" + e.image.ID + "@" + e.image.ManifestDigest,
		Digest: e.image.ManifestDigest, Type: e.image.Type}
	src, err := agent.NewImageSource(agent.ImageSourceConfig{CacheDir: t.TempDir(), Credential: func() string { return e.cred }})
	if err != nil {
		t.Fatal(err)
	}
	img, err := src.Image(ctx, di)
	if err != nil {
		t.Fatalf("Image: %v", err)
	}
	dir := t.TempDir()
	if err := oci.UnpackImage(ctx, img, dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dir + "/etc/motd"); string(b) != "hello\n" {
		t.Errorf("motd %q", b)
	}
	t.Run("ErrWrongCredential", func(t *testing.T) {
		bad, _ := agent.NewImageSource(agent.ImageSourceConfig{CacheDir: t.TempDir(), Credential: func() string { return "nope" }})
		if _, err := bad.Image(ctx, di); !errdefs.Is(err, errdefs.Unauthorized) {
			t.Errorf("err = %v, want Unauthorized", err)
		}
	})
}

// BenchmarkAgentImagePull pulls a 16 MiB single-layer image through the
// agent API registry into a cold agent cache, then from the warm cache.
func BenchmarkAgentImagePull(b *testing.B) {
	ctx := context.Background()
	st := storetest.New(b)
	blobs, _ := oci.NewDirStore(b.TempDir())
	log := slog.New(slog.DiscardHandler)
	svc := &service.Service{Store: st, Log: log}
	svc.SetBlobs(blobs)
	data := make([]byte, 16<<20)
	rand.Read(data)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "blob", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))})
	tw.Write(data)
	tw.Close()
	img, err := oci.ImageFromLayerTars(v1.Config{}, layer.Bytes())
	if err != nil {
		b.Fatal(err)
	}
	im, err := svc.ImportImage(ctx, nil, img, service.ImageMeta{Name: "big", Version: "1"})
	if err != nil {
		b.Fatal(err)
	}
	cred := agentapi.NewToken()
	node, _ := st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Driver: "sim", Brands: []string{"joyent-minimal"}, MemoryMiB: 1024, DiskMiB: 1024, VCPUsMilli: 1000}, agentapi.HashToken(cred))
	owner, _ := st.CreateAccount(ctx, store.Account{Login: "alice", Email: "alice@example.com"})
	net, _ := st.CreateNetwork(ctx, store.Network{Name: "net", Public: true, Subnet: "10.77.0.0/24"})
	(registryEnv{st: st, owner: owner, net: net}).assign(b, node, im)
	s := agentapi.New(st, log)
	s.SetBlobs(blobs)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	di := driver.Image{ID: im.ID, Ref: host + "/images/" + im.ID + "@" + im.ManifestDigest, Digest: im.ManifestDigest}
	warm, _ := agent.NewImageSource(agent.ImageSourceConfig{CacheDir: b.TempDir(), Credential: func() string { return cred }})
	if _, err := warm.Image(ctx, di); err != nil {
		b.Fatal(err)
	}
	b.Run("Cold", func(b *testing.B) {
		b.SetBytes(im.SizeBytes)
		for b.Loop() {
			src, _ := agent.NewImageSource(agent.ImageSourceConfig{CacheDir: b.TempDir(), Credential: func() string { return cred }})
			if _, err := src.Image(ctx, di); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := warm.Image(ctx, di); err != nil {
				b.Fatal(err)
			}
		}
	})
}
