package service

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/errdefs"
)

// craftedLayout is a tar of an OCI layout holding one image whose manifest
// names config and layers by digest; blobs holds the files the layout
// actually carries (digest -> bytes), which need not match those digests.
func craftedLayout(t *testing.T, ref string, config v1.Descriptor, layers []v1.Descriptor, blobs map[v1.Hash][]byte) []byte {
	t.Helper()
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: config, Layers: layers}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	md := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	idx, _ := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{{
		MediaType: types.OCIManifestSchema1, Digest: md, Size: int64(len(raw)),
		Annotations: map[string]string{"io.containerd.image.name": ref}}}})
	files := []struct {
		name string
		data []byte
	}{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"index.json", idx}, {"blobs/sha256/" + md.Hex, raw}}
	for h, b := range blobs {
		files = append(files, struct {
			name string
			data []byte
		}{"blobs/sha256/" + h.Hex, b})
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	return buf.Bytes()
}

// saveContains reports whether owner's `docker save` of ref carries secret.
func saveContains(t *testing.T, e imageEnv, owner, ref string, secret []byte) bool {
	t.Helper()
	var out bytes.Buffer
	if err := e.svc.SaveImage(context.Background(), &owner, ref, &out); err != nil {
		return false
	}
	tr := tar.NewReader(&out)
	for {
		if _, err := tr.Next(); err != nil {
			return false
		}
		b, _ := io.ReadAll(tr)
		if bytes.Contains(b, secret) {
			return true
		}
		if blobHasSecret(b, secret) {
			return true
		}
	}
}

// blobHasSecret looks inside a (gzip'd) layer tar too.
func blobHasSecret(b, secret []byte) bool {
	img, err := layerFiles(b)
	if err != nil {
		return false
	}
	for _, c := range img {
		if bytes.Contains(c, secret) {
			return true
		}
	}
	return false
}

// TestLoadCannotNameAnotherTenantsBlob is the attack of the security
// issue: bob knows the digests of alice's private layer and config and
// loads an archive whose manifest names them without carrying their bytes
// (or carrying other bytes under their names), then saves it back.
func TestLoadCannotNameAnotherTenantsBlob(t *testing.T) {
	e := newImageEnv(t)
	ctx := context.Background()
	secret := []byte("alice's private key material")
	aliceImg := smallImage(t, string(secret))
	priv, err := e.svc.recordDocker(ctx, &e.owner, aliceImg, []string{"alice/private:1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	am, _ := aliceImg.Manifest()
	secretLayer := am.Layers[1]
	if !saveContains(t, e, e.owner, "alice/private:1", secret) {
		t.Fatal("alice's own save does not carry her layer: the check below could not fail")
	}

	// Bob's own config, naming one layer whose diff id he does not know.
	bobCfg, _ := json.Marshal(v1.ConfigFile{OS: "linux", Architecture: "amd64",
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{secretLayer.Digest}}})
	bobCfgSum := sha256.Sum256(bobCfg)
	bobCfgDesc := v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(bobCfg)),
		Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(bobCfgSum[:])}}

	t.Run("ErrLayerNotCarried", func(t *testing.T) {
		archive := craftedLayout(t, "docker.io/library/stolen:1", bobCfgDesc, []v1.Descriptor{secretLayer},
			map[v1.Hash][]byte{bobCfgDesc.Digest: bobCfg})
		_, err := e.svc.LoadArchiveReader(ctx, &e.other, bytes.NewReader(archive))
		if err == nil {
			t.Error("bob loaded a manifest naming alice's layer without its bytes")
		} else if c := errdefs.CodeOf(err); c != errdefs.Invalid && c != errdefs.NotFound {
			t.Errorf("err = %v (%s), want Invalid or NotFound", err, c)
		}
		if saveContains(t, e, e.other, "stolen:1", secret) {
			t.Fatal("bob's docker save carries alice's private layer")
		}
	})
	t.Run("ErrLayerWrongBytes", func(t *testing.T) {
		archive := craftedLayout(t, "docker.io/library/stolen:2", bobCfgDesc, []v1.Descriptor{secretLayer},
			map[v1.Hash][]byte{bobCfgDesc.Digest: bobCfg, secretLayer.Digest: []byte("not the layer")})
		if _, err := e.svc.LoadArchiveReader(ctx, &e.other, bytes.NewReader(archive)); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
		if saveContains(t, e, e.other, "stolen:2", secret) {
			t.Fatal("bob's docker save carries alice's private layer")
		}
	})
	t.Run("ErrConfigWrongBytes", func(t *testing.T) {
		// Alice's config digest, bob's bytes under it: a save would read the
		// blob store's copy, alice's config (her Env, Labels, history).
		myLayer := layerTar(map[string]string{"etc/bob": "bob\n"})
		ls := sha256.Sum256(myLayer)
		ld := v1.Descriptor{MediaType: types.OCIUncompressedLayer, Size: int64(len(myLayer)),
			Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(ls[:])}}
		cfg := v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(bobCfg)), Digest: am.Config.Digest}
		archive := craftedLayout(t, "docker.io/library/stolen:3", cfg, []v1.Descriptor{ld},
			map[v1.Hash][]byte{am.Config.Digest: bobCfg, ld.Digest: myLayer})
		if _, err := e.svc.LoadArchiveReader(ctx, &e.other, bytes.NewReader(archive)); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
		rawCfg, _ := aliceImg.RawConfigFile()
		var out bytes.Buffer
		if err := e.svc.SaveImage(ctx, &e.other, "stolen:3", &out); err == nil && bytes.Contains(out.Bytes(), rawCfg) {
			t.Fatal("bob's docker save carries alice's config")
		}
	})
	t.Run("OKLayerCarried", func(t *testing.T) {
		// Whoever has the bytes may load them: that proves nothing new.
		l, _ := aliceImg.LayerByDigest(secretLayer.Digest)
		rc, _ := l.Compressed()
		b, _ := io.ReadAll(rc)
		rc.Close()
		cfg, _ := aliceImg.RawConfigFile()
		archive := craftedLayout(t, "docker.io/library/mine:1", am.Config, am.Layers,
			map[v1.Hash][]byte{am.Config.Digest: cfg, secretLayer.Digest: b, am.Layers[0].Digest: mustLayer(t, aliceImg, 0)})
		if _, err := e.svc.LoadArchiveReader(ctx, &e.other, bytes.NewReader(archive)); err != nil {
			t.Fatalf("load with the bytes: %v", err)
		}
	})
	t.Run("OKPublicLayerNotCarried", func(t *testing.T) {
		// A layer of an image bob can see may be named without its bytes.
		pubImg := smallImage(t, "public\n")
		if _, err := e.svc.ImportImage(ctx, nil, pubImg, ImageMeta{Name: "pub", Version: "1", Public: true}); err != nil {
			t.Fatal(err)
		}
		pm, _ := pubImg.Manifest()
		cfg, _ := pubImg.RawConfigFile()
		archive := craftedLayout(t, "docker.io/library/onpub:1", pm.Config, pm.Layers, map[v1.Hash][]byte{pm.Config.Digest: cfg})
		if _, err := e.svc.LoadArchiveReader(ctx, &e.other, bytes.NewReader(archive)); err != nil {
			t.Fatalf("load naming a public layer: %v", err)
		}
	})
	_ = priv
}

func mustLayer(t *testing.T, img v1.Image, i int) []byte {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// layerFiles returns the contents of the files in a plain or gzip'd tar.
func layerFiles(b []byte) ([][]byte, error) {
	var r io.Reader = bytes.NewReader(b)
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = zr
	}
	tr := tar.NewReader(r)
	var out [][]byte
	for {
		if _, err := tr.Next(); err != nil {
			if err == io.EOF {
				return out, nil
			}
			return out, err
		}
		c, _ := io.ReadAll(tr)
		out = append(out, c)
	}
}
