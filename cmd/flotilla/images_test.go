package main

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/store/storetest"

	"flotilla/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func TestEnsureDevImages(t *testing.T) {
	testenv.NeedFile(t, "/bin/busybox", "busybox-static")
	if os.Getenv("FLOTILLA_VM_CACHE") == "" {
		// Share the qemu tests' cache so the kernel is fetched once per machine.
		t.Setenv("FLOTILLA_VM_CACHE", filepath.Join(os.TempDir(), "flotilla-vm-cache"))
	}
	ctx := context.Background()
	st := storetest.New(t)
	data := t.TempDir()
	start := time.Now()
	if err := ensureDevImages(ctx, st, data); err != nil {
		t.Fatalf("first run: %v", err)
	}
	first := time.Since(start)
	bb, err := st.ImageByID(ctx, devBusyboxID)
	if err != nil {
		t.Fatal(err)
	}
	if bb.ManifestDigest == "" || bb.Name != "busybox" || bb.Version != "1.36" || bb.Type != "zone-dataset" || !bb.Public {
		t.Errorf("busybox row %+v", bb)
	}
	vm, err := st.ImageByID(ctx, devTinyVMID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first run %v; tiny-vm digest %q", first, vm.ManifestDigest)

	start = time.Now()
	if err := ensureDevImages(ctx, st, data); err != nil {
		t.Fatalf("second run: %v", err)
	}
	second := time.Since(start)
	t.Logf("second run %v", second)
	again, _ := st.ImageByID(ctx, devBusyboxID)
	if !again.UpdatedAt.Equal(bb.UpdatedAt) || again.ManifestDigest != bb.ManifestDigest {
		t.Errorf("second run rewrote busybox: %v -> %v", bb.UpdatedAt, again.UpdatedAt)
	}
	if vm.ManifestDigest != "" && second > 2*time.Second {
		t.Errorf("second run took %v; it should skip images that have content", second)
	}

	svc, err := imageService(st, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := svc.OCIImage(ctx, devBusyboxID)
	if err != nil {
		t.Fatalf("OCIImage(busybox): %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil || len(cf.Config.Cmd) == 0 {
		t.Errorf("busybox config %+v, %v", cf, err)
	}
}

func TestAdminImageImportList(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	data := t.TempDir()
	rootfs := filepath.Join(t.TempDir(), "rootfs.tar")
	f, _ := os.Create(rootfs)
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3})
	tw.Write([]byte("xx\n"))
	tw.Close()
	f.Close()
	if err := adminImage(ctx, st, "import", []string{rootfs, "--name", "base", "--version", "2", "--data", data, "--public"}); err != nil {
		t.Fatalf("import: %v", err)
	}
	ims, err := st.AllImages(ctx)
	if err != nil || len(ims) != 1 || ims[0].Name != "base" || ims[0].ManifestDigest == "" || !ims[0].Public {
		t.Fatalf("images after import: %+v, %v", ims, err)
	}
	if _, err := os.Stat(filepath.Join(data, "blobs", "sha256", ims[0].ManifestDigest[len("sha256:"):])); err != nil {
		t.Errorf("manifest blob not under --data: %v", err)
	}
	if err := adminImage(ctx, st, "list", []string{"--data", data}); err != nil {
		t.Errorf("list: %v", err)
	}
	if err := adminImage(ctx, st, "import", []string{rootfs, "--data", data}); err == nil || !strings.Contains(err.Error(), "needs a name") {
		t.Errorf("import without a name: %v, want \"an image needs a name\"", err)
	}
	if err := adminImage(ctx, st, "load", []string{rootfs, "--data", data}); err == nil {
		t.Error("load of a plain root filesystem succeeded")
	}
}
