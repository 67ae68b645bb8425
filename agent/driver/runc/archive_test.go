package runc

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// archiveFixture is a driver over a hand-made bundle (no runc needed): a
// rootfs with /etc/hello, /data/{a,sub/b}, /link -> /etc, and two links that
// would escape to a host directory holding "secret" if followed from the
// host: /evil (absolute) and /evil2 (relative, climbing).
func archiveFixture(t *testing.T) (*Driver, string, string) {
	t.Helper()
	root := t.TempDir()
	d := &Driver{cfg: Config{Root: root}}
	bundle := filepath.Join(root, "containers", "c1")
	rootfs := filepath.Join(bundle, dirRootfs)
	outside := t.TempDir()
	for _, dir := range []string{"etc", "data/sub", "tmp"} {
		must(t, os.MkdirAll(filepath.Join(rootfs, dir), 0o755))
	}
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/hello"), []byte("hello\n"), 0o640))
	must(t, os.WriteFile(filepath.Join(rootfs, "data/a"), []byte("aaa"), 0o644))
	must(t, os.WriteFile(filepath.Join(rootfs, "data/sub/b"), []byte("bb"), 0o600))
	must(t, os.Symlink("/etc", filepath.Join(rootfs, "link")))
	must(t, os.Symlink("/data", filepath.Join(rootfs, "datalink")))
	must(t, os.Symlink(outside, filepath.Join(rootfs, "evil")))
	must(t, os.Symlink(strings.Repeat("../", 20)+strings.TrimPrefix(outside, "/"), filepath.Join(rootfs, "evil2")))
	must(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o644))
	must(t, writeJSONAtomic(filepath.Join(bundle, fileSpec), driver.Spec{ID: "c1"}))
	return d, rootfs, outside
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// tarEntries lists a tar's names (with link targets) and file contents.
func tarEntries(t *testing.T, b []byte) ([]string, map[string]string) {
	t.Helper()
	var names []string
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, files
		}
		must(t, err)
		n := h.Name
		if h.Linkname != "" {
			n += " -> " + h.Linkname
		}
		names = append(names, n)
		if h.Typeflag == tar.TypeReg {
			c, _ := io.ReadAll(tr)
			files[h.Name] = string(c)
		}
	}
}

func makeTar(t *testing.T, entries ...*tar.Header) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Linkname))
			body := h.Linkname
			h.Linkname = ""
			must(t, tw.WriteHeader(h))
			tw.Write([]byte(body))
			continue
		}
		must(t, tw.WriteHeader(h))
	}
	must(t, tw.Close())
	return &buf
}

// file is a regular-file header whose content is body (carried in
// Linkname until makeTar writes it).
func file(name, body string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Linkname: body}
}

func TestArchiveStatPath(t *testing.T) {
	d, _, _ := archiveFixture(t)
	ctx := context.Background()
	st, err := d.StatPath(ctx, "c1", "/etc/hello")
	if err != nil || st.Name != "hello" || st.Size != 6 || st.Mode != 0o640 || st.Mtime.IsZero() {
		t.Fatalf("stat /etc/hello = %+v, %v", st, err)
	}
	if st, err := d.StatPath(ctx, "c1", "/data/"); err != nil || !st.Mode.IsDir() || st.Name != "data" {
		t.Fatalf("stat /data/ = %+v, %v", st, err)
	}
	if st, err := d.StatPath(ctx, "c1", "/link"); err != nil || st.Mode&os.ModeSymlink == 0 || st.LinkTarget != "/etc" {
		t.Fatalf("stat /link = %+v, %v", st, err)
	}
	if st, err := d.StatPath(ctx, "c1", "/link/hello"); err != nil || st.Size != 6 {
		t.Fatalf("stat /link/hello (through an absolute link, inside the rootfs) = %+v, %v", st, err)
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		for _, p := range []string{"/nope", "/etc/hello/x", "/evil/secret", "/evil2/secret"} {
			if _, err := d.StatPath(ctx, "c1", p); !errdefs.Is(err, errdefs.NotFound) {
				t.Errorf("stat %s: %v, want NotFound", p, err)
			}
		}
		if _, err := d.StatPath(ctx, "nope", "/"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("stat in a missing container: %v, want NotFound", err)
		}
	})
}

func TestArchivePath(t *testing.T) {
	d, _, _ := archiveFixture(t)
	ctx := context.Background()
	get := func(p string) ([]string, map[string]string) {
		var buf bytes.Buffer
		must(t, d.ArchivePath(ctx, "c1", p, &buf))
		names, files := tarEntries(t, buf.Bytes())
		slices.Sort(names)
		return names, files
	}
	if names, files := get("/etc/hello"); !slices.Equal(names, []string{"hello"}) || files["hello"] != "hello\n" {
		t.Fatalf("archive of /etc/hello: %q %q", names, files)
	}
	if names, files := get("/data"); !slices.Equal(names, []string{"data/", "data/a", "data/sub/", "data/sub/b"}) || files["data/sub/b"] != "bb" {
		t.Fatalf("archive of /data: %q %q", names, files)
	}
	if names, _ := get("/datalink/."); !slices.Equal(names, []string{"./", "a", "sub/", "sub/b"}) {
		t.Fatalf("archive of /datalink/. (the contents, through a link): %q", names)
	}
	if names, _ := get("/link"); !slices.Equal(names, []string{"link -> /etc"}) {
		t.Fatalf("archive of /link (the link itself): %q", names)
	}
	t.Run("ErrEscape", func(t *testing.T) {
		for _, p := range []string{"/evil/secret", "/evil2/secret", "/evil/."} {
			var buf bytes.Buffer
			err := d.ArchivePath(ctx, "c1", p, &buf)
			if !errdefs.Is(err, errdefs.NotFound) || strings.Contains(buf.String(), "host secret") {
				t.Errorf("archive %s: %v, want NotFound and nothing from the host", p, err)
			}
		}
	})
}

func TestExtractArchive(t *testing.T) {
	d, rootfs, outside := archiveFixture(t)
	ctx := context.Background()
	extract := func(dir string, opts driver.ArchiveOptions, entries ...*tar.Header) error {
		return d.ExtractArchive(ctx, "c1", dir, makeTar(t, entries...), opts)
	}
	t.Run("OK", func(t *testing.T) {
		err := extract("/datalink", driver.ArchiveOptions{NoOverwriteDirNonDir: true},
			&tar.Header{Name: "new/", Typeflag: tar.TypeDir, Mode: 0o755}, file("new/f", "content"),
			&tar.Header{Name: "new/l", Typeflag: tar.TypeLink, Linkname: "new/f"})
		must(t, err)
		for _, p := range []string{"data/new/f", "data/new/l"} {
			if b, err := os.ReadFile(filepath.Join(rootfs, p)); err != nil || string(b) != "content" {
				t.Errorf("%s: %q %v", p, b, err)
			}
		}
		must(t, extract("/tmp", driver.ArchiveOptions{}, file("x.txt", "x")))
		if b, _ := os.ReadFile(filepath.Join(rootfs, "tmp/x.txt")); string(b) != "x" {
			t.Errorf("tmp/x.txt: %q", b)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		if err := extract("/nope", driver.ArchiveOptions{}, file("f", "x")); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("extract into /nope: %v", err)
		}
	})
	t.Run("ErrNotDirectory", func(t *testing.T) {
		if err := extract("/etc/hello", driver.ArchiveOptions{}, file("f", "x")); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("extract into a file: %v", err)
		}
	})
	t.Run("ErrOverwriteDirNonDir", func(t *testing.T) {
		err := extract("/", driver.ArchiveOptions{NoOverwriteDirNonDir: true}, file("data", "x"))
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("file over /data: %v", err)
		}
		if fi, err := os.Stat(filepath.Join(rootfs, "data")); err != nil || !fi.IsDir() {
			t.Errorf("/data replaced: %v", err)
		}
		err = extract("/etc", driver.ArchiveOptions{NoOverwriteDirNonDir: true}, &tar.Header{Name: "hello/", Typeflag: tar.TypeDir, Mode: 0o755})
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("directory over /etc/hello: %v", err)
		}
	})
	t.Run("ErrEscape", func(t *testing.T) {
		cases := map[string][]*tar.Header{
			"DotDot":       {file("../../../../escaped", "x")},
			"HardlinkOut":  {&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../../../" + strings.TrimPrefix(outside, "/") + "/secret"}},
			"WhiteoutName": {file(".wh.hello", "")},
		}
		for name, entries := range cases {
			if err := extract("/etc", driver.ArchiveOptions{}, entries...); !errdefs.Is(err, errdefs.Invalid) {
				t.Errorf("%s: %v, want Invalid", name, err)
			}
		}
		// Through links to the host path: resolved inside the rootfs, so
		// writes land under it (or fail), never in the host directory.
		extract("/", driver.ArchiveOptions{}, file("evil/pwned", "x"), file("evil2/pwned", "x"))
		extract("/evil", driver.ArchiveOptions{}, file("pwned", "x"))
		extract("/", driver.ArchiveOptions{}, &tar.Header{Name: "evil/s2", Typeflag: tar.TypeLink, Linkname: "evil/secret"})
		ents, _ := os.ReadDir(outside)
		if len(ents) != 1 {
			t.Fatalf("the host directory was written: %v", ents)
		}
		if _, err := os.Stat(filepath.Join(rootfs, "../escaped")); err == nil {
			t.Fatal("escaped with ..")
		}
		if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "host secret" {
			t.Fatalf("host secret changed: %q", b)
		}
	})
}
