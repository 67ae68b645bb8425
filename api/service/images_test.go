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
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"flotilla/api/errdefs"
	"flotilla/oci"
	"flotilla/store"
	"flotilla/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

type imageEnv struct {
	svc   *Service
	st    *store.Store
	blobs *oci.DirStore
	owner string
	other string
}

func newImageEnv(t *testing.T) imageEnv {
	t.Helper()
	st := storetest.New(t)
	blobs, err := oci.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	svc := &Service{Store: st, Log: slog.New(slog.DiscardHandler)}
	svc.SetBlobs(blobs)
	ctx := context.Background()
	a, err := st.CreateAccount(ctx, store.Account{Login: "alice", Email: "a@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.CreateAccount(ctx, store.Account{Login: "bob", Email: "b@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return imageEnv{svc: svc, st: st, blobs: blobs, owner: a.ID, other: b.ID}
}

// layerTar is a tar with the given files.
func layerTar(files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, c := range files {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c))})
		tw.Write([]byte(c))
	}
	tw.Close()
	return buf.Bytes()
}

func smallImage(t *testing.T, content string) v1.Image {
	t.Helper()
	img, err := oci.ImageFromLayerTars(v1.Config{Cmd: []string{"/bin/sh"}},
		layerTar(map[string]string{"etc/base": "base\n"}), layerTar(map[string]string{"etc/motd": content}))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func readFile(t *testing.T, img v1.Image, path string) string {
	t.Helper()
	dir := t.TempDir()
	if err := oci.UnpackImage(context.Background(), img, dir); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestImportRootfs(t *testing.T) {
	e := newImageEnv(t)
	ctx := context.Background()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layerTar(map[string]string{"etc/os-release": "ID=test\n"}))
	zw.Close()
	t.Run("OK", func(t *testing.T) {
		im, err := e.svc.ImportRootfs(ctx, &e.owner, bytes.NewReader(gz.Bytes()), ImageMeta{Name: "base", Version: "1.0",
			Config: v1.Config{Cmd: []string{"/bin/sh"}}})
		if err != nil {
			t.Fatalf("ImportRootfs: %v", err)
		}
		if im.Type != ImageTypeZoneDataset || im.OS != "linux" || !strings.HasPrefix(im.ManifestDigest, "sha256:") || im.SizeBytes <= 0 {
			t.Errorf("image row %+v", im)
		}
		img, err := e.svc.OCIImage(ctx, im.ID)
		if err != nil {
			t.Fatalf("OCIImage: %v", err)
		}
		if d, _ := img.Digest(); d.String() != im.ManifestDigest {
			t.Errorf("blob store manifest %s, row says %s", d, im.ManifestDigest)
		}
		cf, _ := img.ConfigFile()
		if len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != "/bin/sh" {
			t.Errorf("config cmd %v", cf.Config.Cmd)
		}
		if s := readFile(t, img, "etc/os-release"); s != "ID=test\n" {
			t.Errorf("os-release %q", s)
		}
		got, err := e.svc.ResolveImage(ctx, &e.owner, "base@1.0")
		if err != nil || got.ID != im.ID {
			t.Errorf("ResolveImage(base@1.0) = %v, %v", got.ID, err)
		}
	})
	t.Run("ErrNotTar", func(t *testing.T) {
		_, err := e.svc.ImportRootfs(ctx, nil, strings.NewReader("this is not a tarball at all, not even close"), ImageMeta{Name: "x", Version: "1"})
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
	t.Run("ErrNoVersion", func(t *testing.T) {
		_, err := e.svc.ImportRootfs(ctx, nil, bytes.NewReader(gz.Bytes()), ImageMeta{Name: "x"})
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
	t.Run("ErrNoBlobStore", func(t *testing.T) {
		s := &Service{Store: e.st, Log: e.svc.Log}
		_, err := s.ImportRootfs(ctx, nil, bytes.NewReader(gz.Bytes()), ImageMeta{Name: "x", Version: "1"})
		if !errdefs.Is(err, errdefs.Unavailable) {
			t.Errorf("err = %v, want Unavailable", err)
		}
	})
}

func TestImportImageSeedIdempotent(t *testing.T) {
	e := newImageEnv(t)
	ctx := context.Background()
	const id = "b0c1d2e3-0000-4000-8000-0000000000ff"
	// A seeded record without content gets its content later.
	if _, err := e.st.CreateImage(ctx, store.Image{ID: id, Name: "seed", Version: "1", OS: "linux", Type: "zone-dataset", Public: true}); err != nil {
		t.Fatal(err)
	}
	img := smallImage(t, "seed\n")
	im, err := e.svc.ImportImage(ctx, nil, img, ImageMeta{ID: id, Name: "seed", Version: "1", Public: true})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	if im.ID != id || im.ManifestDigest != d.String() {
		t.Fatalf("seeded image %s digest %q, want %s %s", im.ID, im.ManifestDigest, id, d)
	}
	again, err := e.svc.ImportImage(ctx, nil, img, ImageMeta{ID: id, Name: "seed", Version: "1", Public: true})
	if err != nil || again.ID != id || !again.UpdatedAt.Equal(im.UpdatedAt) {
		t.Errorf("second import: %v %v (updated %v, was %v)", again.ID, err, again.UpdatedAt, im.UpdatedAt)
	}
	if _, err := e.svc.OCIImage(ctx, "7a1e0f00-0000-4000-8000-000000000099"); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("OCIImage(unknown) = %v, want NotFound", err)
	}
}

// startRegistry runs go-containerregistry's in-memory registry on 127.0.0.1.
func startRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pushImage(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func TestPull(t *testing.T) {
	e := newImageEnv(t)
	e.svc.SetImagePolicy(ImagePolicy{RegistryAllowPrivate: true}) // the test registry is on loopback
	ctx := context.Background()
	host := startRegistry(t)
	img := smallImage(t, "pulled\n")
	pushImage(t, host+"/team/app:1.0", img)
	pushImage(t, host+"/library/tool:2", img)
	want, _ := img.Digest()

	t.Run("OK", func(t *testing.T) {
		var mu sync.Mutex
		var events []PullProgress
		li, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1.0", PullOptions{Insecure: true, Progress: func(p PullProgress) {
			mu.Lock()
			events = append(events, p)
			mu.Unlock()
		}})
		if err != nil {
			t.Fatalf("Pull: %v", err)
		}
		if li.Image.Type != ImageTypeDocker || li.Image.ManifestDigest != want.String() || li.Existed {
			t.Errorf("pulled %+v", li)
		}
		if len(li.RepoTags) != 1 || li.RepoTags[0] != host+"/team/app:1.0" {
			t.Errorf("repo tags %v", li.RepoTags)
		}
		complete := 0
		for _, ev := range events {
			if ev.Status == "Pull complete" {
				complete++
			}
		}
		if complete != 2 {
			t.Errorf("%d layers reported complete, want 2 (events %v)", complete, events)
		}
		got, err := e.svc.ResolveImage(ctx, &e.owner, host+"/team/app:1.0")
		if err != nil || got.ID != li.Image.ID {
			t.Errorf("resolve by tag: %v %v", got.ID, err)
		}
		oimg, err := e.svc.OCIImage(ctx, li.Image.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s := readFile(t, oimg, "etc/motd"); s != "pulled\n" {
			t.Errorf("motd %q", s)
		}
	})
	t.Run("SecondPullExists", func(t *testing.T) {
		var exists int
		li, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1.0", PullOptions{Progress: func(p PullProgress) {
			if p.Status == "Already exists" {
				exists++
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		if !li.Existed || exists != 2 {
			t.Errorf("existed %v, %d layers already there", li.Existed, exists)
		}
	})
	t.Run("Mirror", func(t *testing.T) {
		li, err := e.svc.Pull(ctx, &e.other, "tool:2", PullOptions{Registry: "http://" + host})
		if err != nil {
			t.Fatalf("Pull via mirror: %v", err)
		}
		if len(li.RepoTags) != 1 || li.RepoTags[0] != "tool:2" {
			t.Errorf("repo tags %v, want [tool:2]", li.RepoTags)
		}
		if _, err := e.svc.ResolveImage(ctx, &e.owner, "tool:2"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("another account's tag resolved: %v", err)
		}
	})
	t.Run("ByDigest", func(t *testing.T) {
		li, err := e.svc.Pull(ctx, nil, host+"/team/app@"+want.String(), PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if li.Image.OwnerID != nil || len(li.RepoTags) != 0 {
			t.Errorf("operator pull by digest: %+v", li)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		_, err := e.svc.Pull(ctx, &e.owner, host+"/team/missing:1", PullOptions{})
		if !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("err = %v, want NotFound", err)
		}
	})
	t.Run("ErrBadRef", func(t *testing.T) {
		_, err := e.svc.Pull(ctx, &e.owner, "UPPER/Case::x", PullOptions{})
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
}

func TestSaveLoadRoundTrip(t *testing.T) {
	e := newImageEnv(t)
	e.svc.SetImagePolicy(ImagePolicy{RegistryAllowPrivate: true}) // the test registry is on loopback
	ctx := context.Background()
	host := startRegistry(t)
	img := smallImage(t, "round trip\n")
	pushImage(t, host+"/library/rt:1", img)
	li, err := e.svc.Pull(ctx, &e.owner, "rt:1", PullOptions{Registry: host, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := e.svc.SaveImage(ctx, &e.owner, "rt:1", &buf); err != nil {
		t.Fatalf("SaveImage: %v", err)
	}
	loaded, err := e.svc.LoadArchiveReader(ctx, &e.other, &buf)
	if err != nil {
		t.Fatalf("LoadArchiveReader: %v", err)
	}
	if len(loaded) != 1 || len(loaded[0].RepoTags) != 1 || loaded[0].RepoTags[0] != "rt:1" {
		t.Fatalf("loaded %+v", loaded)
	}
	oimg, err := e.svc.OCIImage(ctx, loaded[0].Image.ID)
	if err != nil {
		t.Fatal(err)
	}
	// docker save rewrites the manifest (Docker media types) but keeps the
	// config and the layers byte for byte.
	origCfg, _ := img.ConfigName()
	gotCfg, _ := oimg.ConfigName()
	if origCfg != gotCfg {
		t.Errorf("config digest %s after round trip, want %s", gotCfg, origCfg)
	}
	ol, _ := img.Layers()
	gl, _ := oimg.Layers()
	if len(ol) != len(gl) {
		t.Fatalf("%d layers, want %d", len(gl), len(ol))
	}
	for i := range ol {
		a, _ := ol[i].Digest()
		b, _ := gl[i].Digest()
		if a != b {
			t.Errorf("layer %d: %s, want %s", i, b, a)
		}
	}
	if s := readFile(t, oimg, "etc/motd"); s != "round trip\n" {
		t.Errorf("motd %q", s)
	}
	got, err := e.svc.ResolveImage(ctx, &e.other, "rt:1")
	if err != nil || got.ID != loaded[0].Image.ID || got.ID == li.Image.ID {
		t.Errorf("bob's rt:1 = %v (%v); alice's is %s", got.ID, err, li.Image.ID)
	}

	t.Run("SaveByID", func(t *testing.T) {
		var b bytes.Buffer
		if err := e.svc.SaveImage(ctx, &e.owner, li.Image.ID, &b); err != nil {
			t.Fatal(err)
		}
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil })
		if err != nil || len(m) != 1 || len(m[0].RepoTags) != 0 {
			t.Errorf("manifest.json %+v, %v", m, err)
		}
	})
	t.Run("ErrSaveOthersImage", func(t *testing.T) {
		err := e.svc.SaveImage(ctx, &e.other, li.Image.ID, io.Discard)
		if !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("err = %v, want NotFound", err)
		}
	})
	t.Run("LoadLayout", func(t *testing.T) {
		dir := t.TempDir()
		p, err := layout.Write(dir, empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		other := smallImage(t, "from a layout\n")
		if err := p.AppendImage(other, layout.WithAnnotations(map[string]string{"io.containerd.image.name": "docker.io/library/lay:3"})); err != nil {
			t.Fatal(err)
		}
		loaded, err := e.svc.LoadArchive(ctx, &e.owner, dir)
		if err != nil {
			t.Fatalf("LoadArchive(layout): %v", err)
		}
		d, _ := other.Digest()
		if len(loaded) != 1 || loaded[0].Image.ManifestDigest != d.String() || len(loaded[0].RepoTags) != 1 || loaded[0].RepoTags[0] != "lay:3" {
			t.Errorf("loaded %+v", loaded)
		}
	})
	t.Run("LoadUncompressedDockerSave", func(t *testing.T) {
		// What `docker save` writes: layer.tar files without compression.
		layerData := layerTar(map[string]string{"etc/motd": "uncompressed\n"})
		diffID := sha256.Sum256(layerData)
		cfg, _ := json.Marshal(v1.ConfigFile{OS: "linux", Architecture: "amd64",
			RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{{Algorithm: "sha256", Hex: hex.EncodeToString(diffID[:])}}}})
		cfgSum := sha256.Sum256(cfg)
		manifest, _ := json.Marshal([]map[string]any{{"Config": hex.EncodeToString(cfgSum[:]) + ".json",
			"RepoTags": []string{"saved:1"}, "Layers": []string{"abc/layer.tar"}}})
		var archive bytes.Buffer
		tw := tar.NewWriter(&archive)
		for _, f := range []struct {
			name string
			data []byte
		}{{hex.EncodeToString(cfgSum[:]) + ".json", cfg}, {"abc/layer.tar", layerData}, {"manifest.json", manifest}} {
			tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))})
			tw.Write(f.data)
		}
		tw.Close()
		loaded, err := e.svc.LoadArchiveReader(ctx, &e.owner, &archive)
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		if len(loaded) != 1 || len(loaded[0].RepoTags) != 1 || loaded[0].RepoTags[0] != "saved:1" {
			t.Fatalf("loaded %+v", loaded)
		}
		img, err := e.svc.OCIImage(ctx, loaded[0].Image.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s := readFile(t, img, "etc/motd"); s != "uncompressed\n" {
			t.Errorf("motd %q", s)
		}
	})
	t.Run("ErrLoadGarbage", func(t *testing.T) {
		_, err := e.svc.LoadArchiveReader(ctx, &e.owner, strings.NewReader(string(layerTar(map[string]string{"hello": "x"}))))
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
}

func TestTagUntagResolve(t *testing.T) {
	e := newImageEnv(t)
	ctx := context.Background()
	im, err := e.svc.ImportImage(ctx, &e.owner, smallImage(t, "t\n"), ImageMeta{Name: "web", Version: "2.0"})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := e.svc.ImportImage(ctx, nil, smallImage(t, "pub\n"), ImageMeta{Name: "busybox", Version: "1.36", Public: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Tag(ctx, e.owner, im.ID[:8], "myrepo/web:prod"); err != nil {
		t.Fatalf("Tag: %v", err)
	}
	tests := []struct {
		name, owner, ref, want string
		code                   errdefs.Code
	}{
		{"OK/UUID", e.owner, im.ID, im.ID, ""},
		{"OK/Prefix", e.owner, im.ID[:6], im.ID, ""},
		{"OK/RepoTag", e.owner, "myrepo/web:prod", im.ID, ""},
		{"OK/NameAtVersion", e.owner, "web@2.0", im.ID, ""},
		{"OK/NameLatest", e.owner, "web", im.ID, ""},
		{"OK/Digest", e.owner, im.ManifestDigest, im.ID, ""},
		{"OK/PublicNameTag", e.other, "busybox:1.36", pub.ID, ""},
		{"OK/PublicNameAtVersion", e.other, "busybox@1.36", pub.ID, ""},
		{"ErrOtherAccountsTag", e.other, "myrepo/web:prod", "", errdefs.NotFound},
		{"ErrOtherAccountsUUID", e.other, im.ID, "", errdefs.NotFound},
		{"ErrOtherAccountsDigest", e.other, im.ManifestDigest, "", errdefs.NotFound},
		{"ErrUnknown", e.owner, "nothing:here", "", errdefs.NotFound},
		{"ErrEmpty", e.owner, " ", "", errdefs.Invalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.owner
			got, err := e.svc.ResolveImage(ctx, &o, tc.ref)
			if tc.code != "" {
				if !errdefs.Is(err, tc.code) {
					t.Errorf("ResolveImage(%q) = %v, %v; want %s", tc.ref, got.ID, err, tc.code)
				}
				return
			}
			if err != nil || got.ID != tc.want {
				t.Errorf("ResolveImage(%q) = %v, %v; want %s", tc.ref, got.ID, err, tc.want)
			}
		})
	}
	t.Run("RepoTags", func(t *testing.T) {
		tags, err := e.svc.RepoTags(ctx, e.owner, im.ID)
		if err != nil || len(tags) != 1 || tags[0] != "myrepo/web:prod" {
			t.Errorf("RepoTags = %v, %v", tags, err)
		}
	})
	t.Run("Untag", func(t *testing.T) {
		id, err := e.svc.Untag(ctx, e.owner, "myrepo/web:prod")
		if err != nil || id != im.ID {
			t.Fatalf("Untag = %v, %v", id, err)
		}
		if _, err := e.svc.ResolveImage(ctx, &e.owner, "myrepo/web:prod"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("resolved after untag: %v", err)
		}
		if _, err := e.svc.Untag(ctx, e.owner, "myrepo/web:prod"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("second untag: %v, want NotFound", err)
		}
	})
	t.Run("ErrTagUnknownImage", func(t *testing.T) {
		if err := e.svc.Tag(ctx, e.other, im.ID, "x:1"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("err = %v, want NotFound", err)
		}
	})
	t.Run("ErrAmbiguousPrefix", func(t *testing.T) {
		// Two uuids that share a prefix.
		for _, id := range []string{"abcd0000-0000-4000-8000-000000000001", "abcd0000-0000-4000-8000-000000000002"} {
			if _, err := e.st.CreateImage(ctx, store.Image{ID: id, OwnerID: &e.owner, Name: "amb", Version: id[35:], OS: "linux", Type: "zone-dataset"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.svc.ResolveImage(ctx, &e.owner, "abcd0000"); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("err = %v, want Invalid", err)
		}
	})
}

func FuzzParseRepoTag(f *testing.F) {
	for _, s := range []string{"busybox", "busybox:1.36", "quay.io/org/app:v1", "localhost:5000/x", "a@sha256:00", "", ":", "UPPER"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		repo, tag, err := ParseRepoTag(s)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("ParseRepoTag(%q): %v is not Invalid", s, err)
			}
			return
		}
		if repo == "" || tag == "" {
			t.Fatalf("ParseRepoTag(%q) = %q, %q", s, repo, tag)
		}
		// The familiar form parses to itself.
		r2, t2, err := ParseRepoTag(repo + ":" + tag)
		if err != nil || r2 != repo || t2 != tag {
			t.Fatalf("ParseRepoTag(%q) = %q %q, reparse %q %q %v", s, repo, tag, r2, t2, err)
		}
	})
}
