package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"flotilla/api/errdefs"
)

// TestUnpackSwapToSymlinkBeforeChmod replays the `docker cp` PUT attack: the
// container swaps each entry for a symlink to a host file between its
// creation and the final chmod, which must not follow it (-rwsrwxrwx on a
// host file otherwise).
func TestUnpackSwapToSymlinkBeforeChmod(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: fifos, chown and setuid modes as in the agent need root")
	}
	cases := []struct {
		name string
		hdr  *tar.Header
	}{
		{"File", &tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o4777, Size: 1}},
		{"Directory", &tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o4777}},
		{"Fifo", &tar.Header{Typeflag: tar.TypeFifo, Name: "p", Mode: 0o4777}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sb := newSandbox(t)
			canary := filepath.Join(sb.dir, "sentinel")
			must(t, os.Chmod(canary, 0o644))
			swapped := false
			testHookCreated = func(dirfd int, base string) {
				if err := removeAt(dirfd, base); err != nil {
					t.Errorf("swap: remove %s: %v", base, err)
				}
				if err := unix.Symlinkat(canary, dirfd, base); err != nil {
					t.Errorf("swap: symlink %s: %v", base, err)
				}
				swapped = true
			}
			defer func() { testHookCreated = nil }()
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			must(t, tw.WriteHeader(c.hdr))
			if c.hdr.Size > 0 {
				tw.Write([]byte("x"))
			}
			must(t, tw.Close())
			_ = Unpack(context.Background(), &buf, sb.rootfs, UnpackOptions{})
			if !swapped {
				t.Fatal("the swap hook never ran")
			}
			fi, err := os.Stat(canary)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != 0o644 {
				t.Errorf("host file's mode became %v through the swapped symlink, want -rw-r--r--", fi.Mode())
			}
			if e := sb.escape(); e != "" {
				t.Errorf("escaped the rootfs: %s", e)
			}
		})
	}
}

// TestUnpackRefusesDeviceNodes: a layer or an upload with a character or
// block device would give the agent (which reads the rootfs as host root)
// and the container a handle on host devices.
func TestUnpackRefusesDeviceNodes(t *testing.T) {
	for _, typ := range []byte{tar.TypeChar, tar.TypeBlock} {
		sb := newSandbox(t)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		must(t, tw.WriteHeader(&tar.Header{Typeflag: typ, Name: "dev/urandom", Mode: 0o666, Devmajor: 1, Devminor: 9}))
		must(t, tw.Close())
		err := Unpack(context.Background(), &buf, sb.rootfs, UnpackOptions{})
		if errdefs.CodeOf(err) != errdefs.Invalid {
			t.Errorf("type %q: Unpack = %v, want an invalid error", typ, err)
		}
		if _, err := os.Lstat(filepath.Join(sb.rootfs, "dev/urandom")); err == nil {
			t.Errorf("type %q: the device node was created", typ)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
