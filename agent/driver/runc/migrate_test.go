package runc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

// TestMigrationMovesTheWritableLayer exports a container's writable layer
// on one driver and imports it into the same container created on another:
// added files and deleted image files (whiteouts) come across, nothing of
// the transfer stays in either bundle, and the source's copy can then be
// removed without touching anything outside its bundle.
func TestMigrationMovesTheWritableLayer(t *testing.T) {
	src, srcRoot := overlayFixture(t)
	dst, dstRoot := overlayFixture(t)
	ctx := context.Background()

	must(t, os.WriteFile(filepath.Join(srcRoot, "etc/added"), []byte("added\n"), 0o600))
	must(t, os.Remove(filepath.Join(srcRoot, "etc/gone")))
	must(t, os.MkdirAll(filepath.Join(srcRoot, "srv/app"), 0o755))
	must(t, os.WriteFile(filepath.Join(srcRoot, "srv/app/f"), []byte("nested\n"), 0o644))

	disk, err := src.ExportDisk(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if disk.Layer != "upper" || disk.Size <= 0 {
		t.Fatalf("export: layer %q, size %d", disk.Layer, disk.Size)
	}
	if err := dst.ImportDisk(ctx, "c1", "rootfs", strings.NewReader("")); !errdefs.Is(err, errdefs.Invalid) {
		t.Fatalf("import of a copied rootfs into an overlay container: %v, want Invalid", err)
	}
	if err := dst.ImportDisk(ctx, "c1", "upper", disk); err != nil {
		t.Fatal(err)
	}
	disk.Close()

	for path, want := range map[string]string{"etc/added": "added\n", "srv/app/f": "nested\n", "etc/base": "base\n",
		"etc/gone": "<missing>", "keep/x": "x\n"} {
		if got := readOr(t, filepath.Join(dstRoot, path)); got != want {
			t.Errorf("%s on the target: %q, want %q", path, got, want)
		}
	}
	for _, d := range []*Driver{src, dst} {
		if snaps, err := d.Snapshots(ctx, "c1"); err != nil || len(snaps) != 0 {
			t.Errorf("snapshots left by the transfer: %v, %v", snaps, err)
		}
	}
	bundle := filepath.Join(src.cfg.Root, "containers", "c1")
	if err := src.RemoveLocal(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Errorf("the source bundle is still there: %v", err)
	}
	if err := src.RemoveLocal(ctx, "c1"); err != nil {
		t.Errorf("removing it again: %v", err)
	}
}
