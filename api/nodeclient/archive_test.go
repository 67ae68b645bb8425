package nodeclient_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"flotilla/api/errdefs"
)

func TestArchive(t *testing.T) {
	d, n, c := setup(t)
	ctx := context.Background()
	run(t, d, "a", true)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "f.txt", Typeflag: tar.TypeReg, Mode: 0o600, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	if err := c.Extract(ctx, n, "a", "/tmp", true, &buf); err != nil {
		t.Fatal(err)
	}
	st, err := c.StatPath(ctx, n, "a", "/tmp/f.txt")
	if err != nil || st.Name != "f.txt" || st.Size != 5 || os.FileMode(st.Mode) != 0o600 {
		t.Fatalf("stat: %+v %v", st, err)
	}
	st, rc, err := c.Archive(ctx, n, "a", "/tmp/f.txt")
	if err != nil || st.Size != 5 {
		t.Fatalf("archive: %+v %v", st, err)
	}
	tr := tar.NewReader(rc)
	h, err := tr.Next()
	if err != nil || h.Name != "f.txt" {
		t.Fatalf("first entry: %+v %v", h, err)
	}
	if b, _ := io.ReadAll(tr); string(b) != "hello" {
		t.Fatalf("content %q", b)
	}
	rc.Close()
	if st, err := c.StatPath(ctx, n, "a", "/tmp"); err != nil || !os.FileMode(st.Mode).IsDir() {
		t.Fatalf("stat /tmp: %+v %v", st, err)
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		if _, err := c.StatPath(ctx, n, "a", "/nope"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("stat: %v", err)
		}
		if _, _, err := c.Archive(ctx, n, "a", "/nope"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("archive: %v", err)
		}
		if err := c.Extract(ctx, n, "a", "/nope", false, bytes.NewReader(nil)); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("extract: %v", err)
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		if err := c.Extract(ctx, n, "a", "/tmp/f.txt", false, bytes.NewReader(nil)); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("extract into a file: %v", err)
		}
		if _, err := c.StatPath(ctx, n, "a", "relative"); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("relative path: %v", err)
		}
	})
}
