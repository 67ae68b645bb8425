package dockerapi

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/service"
)

// TestDockerBlobTenancy: bob, knowing the digest of alice's private layer,
// loads an archive naming it without its bytes and saves it back; the
// load is refused and no save of his carries alice's bytes.
func TestDockerBlobTenancy(t *testing.T) {
	e := newTestEnv(t)
	e.svc.SetBlobs(mustDirStore(t))
	ctx := context.Background()
	dir := t.TempDir()
	secret := "alice-private-" + hex.EncodeToString(randBytes(t, 8))
	rootfs := filepath.Join(dir, "rootfs.tar")
	must(t, os.WriteFile(rootfs, tarOf(t, map[string]string{"etc/secret": secret}), 0o644))
	e.ok("alice", "import", rootfs, "alice/private:1")

	alice, err := e.st.AccountByLogin(ctx, "alice")
	must(t, err)
	im, err := e.svc.ResolveImage(ctx, &alice.ID, "alice/private:1")
	must(t, err)
	var m v1.Manifest
	must(t, json.Unmarshal(im.Manifest, &m))
	layer := m.Layers[0]

	cfg, _ := json.Marshal(v1.ConfigFile{OS: "linux", Architecture: "amd64",
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{layer.Digest}}})
	cs := sha256.Sum256(cfg)
	cfgDesc := v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(cfg)),
		Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(cs[:])}}
	raw, _ := json.Marshal(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: cfgDesc, Layers: []v1.Descriptor{layer}})
	ms := sha256.Sum256(raw)
	md := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(ms[:])}
	idx, _ := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{{
		MediaType: types.OCIManifestSchema1, Digest: md, Size: int64(len(raw)),
		Annotations: map[string]string{"io.containerd.image.name": "docker.io/library/stolen:1"}}}})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, b := range map[string][]byte{"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`), "index.json": idx,
		"blobs/sha256/" + md.Hex: raw, "blobs/sha256/" + cfgDesc.Digest.Hex: cfg} {
		must(t, tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}))
		tw.Write(b)
	}
	must(t, tw.Close())
	crafted := filepath.Join(dir, "crafted.tar")
	must(t, os.WriteFile(crafted, buf.Bytes(), 0o644))

	e.fails("bob", 1, "layer "+layer.Digest.String(), "load", "-i", crafted)
	out := filepath.Join(dir, "out.tar")
	if _, _, code := e.run("bob", "save", "-o", out, "stolen:1"); code == 0 {
		if b, _ := os.ReadFile(out); archiveHas(t, b, secret) {
			t.Fatal("bob's docker save carries alice's private layer")
		}
	}
	// Alice's own save still carries it (the check above can fail).
	e.ok("alice", "save", "-o", out, "alice/private:1")
	if b, _ := os.ReadFile(out); !archiveHas(t, b, secret) {
		t.Fatal("alice's save lacks her layer")
	}
}

// TestDockerUploadLimits: load, import and pull are bounded by the
// operator's limits with a 413 that says which limit.
func TestDockerUploadLimits(t *testing.T) {
	base := newTestEnv(t)
	base.svc.SetBlobs(mustDirStore(t))
	e := base.withEndpoint(Config{UploadMaxBytes: 64 << 10})
	dir := t.TempDir()
	big := filepath.Join(dir, "big.tar")
	must(t, os.WriteFile(big, tarOf(t, map[string]string{"blob": string(randBytes(t, 256<<10))}), 0o644))

	t.Run("ErrLoadTooLarge", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 1, "over this endpoint's limit of 65536 bytes per upload", "load", "-i", big)
	})
	t.Run("ErrImportTooLarge", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 1, "over this endpoint's limit of 65536 bytes per upload", "import", big, "big:1")
	})
	t.Run("ErrCpTooLarge", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "cpbox", "busybox:1.36", "sleep", "1000")
		raw := filepath.Join(dir, "raw")
		must(t, os.WriteFile(raw, randBytes(t, 256<<10), 0o644))
		e.fails("alice", 1, "over this endpoint's limit of 65536 bytes per upload", "cp", raw, "cpbox:/tmp/")
		small := filepath.Join(dir, "fits")
		must(t, os.WriteFile(small, []byte("fits\n"), 0o644))
		e.ok("alice", "cp", small, "cpbox:/tmp/")
	})
	t.Run("ErrImportOverQuota", func(t *testing.T) {
		e := e.with(t)
		e.svc.SetImagePolicy(service.ImagePolicy{AccountImageBytes: 1 << 10})
		t.Cleanup(func() { e.svc.SetImagePolicy(service.ImagePolicy{}) })
		small := filepath.Join(dir, "small.tar")
		must(t, os.WriteFile(small, tarOf(t, map[string]string{"f": string(randBytes(t, 4<<10))}), 0o644))
		e.fails("alice", 1, "over its quota", "import", small, "small:1")
	})
	t.Run("ErrPullLoopback", func(t *testing.T) {
		e := e.with(t)
		hub, _ := hubStandIn(t)
		e.fails("alice", 1, "--registry-allow-private", "pull", strings.TrimPrefix(hub, "http://")+"/library/busybox:latest")
	})
}

// archiveHas reports whether a `docker save` archive carries s in any
// blob, gzip'd or not.
func archiveHas(t *testing.T, archive []byte, s string) bool {
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		if _, err := tr.Next(); err != nil {
			return false
		}
		b, _ := io.ReadAll(tr)
		if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
			if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
				b, _ = io.ReadAll(zr)
			}
		}
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
