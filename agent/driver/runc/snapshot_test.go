package runc

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// overlayFixture is a driver over a hand-made stopped container (no runc
// needed) whose rootfs is overlayfs over one lower directory holding
// /etc/base, /etc/gone and /keep/x.
func overlayFixture(t *testing.T) (*Driver, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: overlayfs mounts, device nodes and trusted.* xattrs")
	}
	root := t.TempDir()
	d := &Driver{cfg: Config{Root: root}}
	lower := filepath.Join(root, "layers", "l1")
	must(t, os.MkdirAll(filepath.Join(lower, "etc"), 0o755))
	must(t, os.MkdirAll(filepath.Join(lower, "keep"), 0o755))
	must(t, os.WriteFile(filepath.Join(lower, "etc/base"), []byte("base\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(lower, "etc/gone"), []byte("gone\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(lower, "keep/x"), []byte("x\n"), 0o644))
	bundle := filepath.Join(root, "containers", "c1")
	must(t, os.MkdirAll(filepath.Join(bundle, dirRootfs), 0o755))
	must(t, os.WriteFile(filepath.Join(bundle, "lowers"), []byte(lower), 0o600))
	must(t, writeJSONAtomic(filepath.Join(bundle, fileSpec), driver.Spec{ID: "c1"}))
	if err := mountOverlay(bundle); err != nil {
		t.Skipf("overlayfs unavailable here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(bundle, dirRootfs), unix.MNT_DETACH) })
	return d, filepath.Join(bundle, dirRootfs)
}

func readOr(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return "<missing>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSnapshotRestoresTheWritableLayer(t *testing.T) {
	d, rootfs := overlayFixture(t)
	ctx := context.Background()

	// What the container wrote before the snapshot: a file owned by
	// someone else with set-user-ID, a hard link, a symbolic link, a
	// deleted lower file (a whiteout) and an opaque directory.
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/hello"), []byte("v1\n"), 0o644))
	must(t, os.MkdirAll(filepath.Join(rootfs, "srv"), 0o750))
	must(t, os.WriteFile(filepath.Join(rootfs, "srv/tool"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Chown(filepath.Join(rootfs, "srv/tool"), 1000, 1001))
	must(t, unix.Chmod(filepath.Join(rootfs, "srv/tool"), 0o4755))
	must(t, os.Link(filepath.Join(rootfs, "srv/tool"), filepath.Join(rootfs, "srv/tool2")))
	must(t, os.Symlink("/etc/hello", filepath.Join(rootfs, "hello-link")))
	must(t, os.Remove(filepath.Join(rootfs, "etc/gone")))
	must(t, os.RemoveAll(filepath.Join(rootfs, "keep")))
	must(t, os.Mkdir(filepath.Join(rootfs, "keep"), 0o755)) // opaque now: x stays hidden

	info, err := d.CreateSnapshot(ctx, "c1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "s1" || info.SizeBytes <= 0 {
		t.Fatalf("CreateSnapshot = %+v, want s1 with a size", info)
	}
	if _, err := d.CreateSnapshot(ctx, "c1", "s1"); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("a second snapshot s1: err = %v, want Conflict", err)
	}
	if _, err := d.CreateSnapshot(ctx, "c1", "../x"); !errdefs.Is(err, errdefs.Invalid) {
		t.Fatalf("snapshot ../x: err = %v, want Invalid", err)
	}

	// Everything changes after it.
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/hello"), []byte("v2\n"), 0o644))
	must(t, os.Remove(filepath.Join(rootfs, "srv/tool2")))
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/gone"), []byte("back\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(rootfs, "later"), []byte("later\n"), 0o644))
	must(t, os.Remove(filepath.Join(rootfs, "etc/base")))

	if err := d.RestoreSnapshot(ctx, "c1", "nope"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("restore of an unknown snapshot: err = %v, want NotFound", err)
	}
	if err := d.RestoreSnapshot(ctx, "c1", "s1"); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"etc/hello": "v1\n", "etc/base": "base\n", "etc/gone": "<missing>", "later": "<missing>",
		"keep/x": "<missing>", "srv/tool": "#!/bin/sh\n", "srv/tool2": "#!/bin/sh\n",
	} {
		if got := readOr(t, filepath.Join(rootfs, p)); got != want {
			t.Errorf("after restore /%s = %q, want %q", p, got, want)
		}
	}
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(rootfs, "srv/tool"), &st))
	if st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o7777 != 0o4755 || st.Nlink != 2 {
		t.Errorf("srv/tool after restore: uid %d gid %d mode %o links %d, want 1000 1001 4755 2", st.Uid, st.Gid, st.Mode&0o7777, st.Nlink)
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "hello-link")); err != nil || target != "/etc/hello" {
		t.Errorf("hello-link after restore = %q, %v", target, err)
	}

	list, err := d.Snapshots(ctx, "c1")
	if err != nil || len(list) != 1 || list[0].Name != "s1" {
		t.Fatalf("Snapshots = %+v, %v; want s1", list, err)
	}
	must(t, d.DeleteSnapshot(ctx, "c1", "s1"))
	must(t, d.DeleteSnapshot(ctx, "c1", "s1")) // a no-op the second time
	if list, err := d.Snapshots(ctx, "c1"); err != nil || len(list) != 0 {
		t.Fatalf("Snapshots after delete = %+v, %v; want none", list, err)
	}
	if err := d.RestoreSnapshot(ctx, "c1", "s1"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("restore of a deleted snapshot: err = %v, want NotFound", err)
	}
	if _, err := d.CreateSnapshot(ctx, "c9", "s1"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("snapshot of an unknown container: err = %v, want NotFound", err)
	}
}
