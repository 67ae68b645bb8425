package sim

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

func simTar(t *testing.T, entries map[string]string) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range entries {
		h := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}
		if name[len(name)-1] == '/' {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return &buf
}

func TestArchive(t *testing.T) {
	d := MustNew(t, Config{})
	ctx := context.Background()
	if err := d.Create(ctx, driver.Spec{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if st, err := d.StatPath(ctx, "a", "/tmp/"); err != nil || !st.Mode.IsDir() || st.Name != "tmp" {
		t.Fatalf("stat /tmp/: %+v %v", st, err)
	}
	if err := d.ExtractArchive(ctx, "a", "/tmp", simTar(t, map[string]string{"d/": "", "d/f": "hello"}), driver.ArchiveOptions{}); err != nil {
		t.Fatal(err)
	}
	if st, err := d.StatPath(ctx, "a", "/tmp/d/f"); err != nil || st.Size != 5 || st.Mode != 0o644 {
		t.Fatalf("stat /tmp/d/f: %+v %v", st, err)
	}
	var buf bytes.Buffer
	if err := d.ArchivePath(ctx, "a", "/tmp/d", &buf); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == "d/f" {
			if b, _ := io.ReadAll(tr); string(b) != "hello" {
				t.Fatalf("d/f = %q", b)
			}
		}
	}
	if len(names) != 2 || names[0] != "d/" || names[1] != "d/f" {
		t.Fatalf("archive of /tmp/d: %q", names)
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		if _, err := d.StatPath(ctx, "a", "/nope"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("stat /nope: %v", err)
		}
		if err := d.ArchivePath(ctx, "a", "/nope", io.Discard); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("archive /nope: %v", err)
		}
		if err := d.ExtractArchive(ctx, "a", "/nope", simTar(t, map[string]string{"f": "x"}), driver.ArchiveOptions{}); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("extract into /nope: %v", err)
		}
		if _, err := d.StatPath(ctx, "b", "/"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("stat in a missing instance: %v", err)
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		if err := d.ExtractArchive(ctx, "a", "/tmp/d/f", simTar(t, map[string]string{"f": "x"}), driver.ArchiveOptions{}); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("extract into a file: %v", err)
		}
		if err := d.ExtractArchive(ctx, "a", "/tmp", simTar(t, map[string]string{"../etc/x": "x"}), driver.ArchiveOptions{}); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("extract ../: %v", err)
		}
		if _, err := d.StatPath(ctx, "a", "/etc/x"); err == nil {
			t.Error("../etc/x was written")
		}
		err := d.ExtractArchive(ctx, "a", "/tmp", simTar(t, map[string]string{"d": "x"}), driver.ArchiveOptions{NoOverwriteDirNonDir: true})
		if !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("file over a directory: %v", err)
		}
		if st, _ := d.StatPath(ctx, "a", "/tmp/d"); st.Mode&os.ModeDir == 0 {
			t.Error("/tmp/d replaced")
		}
	})
	if err := d.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.StatPath(ctx, "a", "/tmp/d/f"); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("stat after delete: %v", err)
	}
}
