package runc

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// TestArchivePathSwapRace replays the `docker cp` GET attack: between the
// agent's stat of a regular file and its open, the container swaps the file
// for a device node (made with CAP_MKNOD or uploaded) or a symlink to a host
// file. The archive must carry neither the device's nor the host's content.
func TestArchivePathSwapRace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: device nodes need root")
	}
	cases := map[string]func(t *testing.T, dirfd int, name, outside string){
		"CharDevice": func(t *testing.T, dirfd int, name, _ string) {
			must(t, unix.Unlinkat(dirfd, name, 0))
			must(t, unix.Mknodat(dirfd, name, unix.S_IFCHR|0o644, int(unix.Mkdev(1, 5)))) // /dev/zero
		},
		"SymlinkToHost": func(t *testing.T, dirfd int, name, outside string) {
			must(t, unix.Unlinkat(dirfd, name, 0))
			must(t, unix.Symlinkat(filepath.Join(outside, "secret"), dirfd, name))
		},
		"Fifo": func(t *testing.T, dirfd int, name, _ string) {
			must(t, unix.Unlinkat(dirfd, name, 0))
			must(t, unix.Mknodat(dirfd, name, unix.S_IFIFO|0o644, 0))
		},
	}
	for cname, swap := range cases {
		t.Run(cname, func(t *testing.T) {
			d, _, outside := archiveFixture(t)
			swapped := false
			testHookBeforeOpen = func(dirfd int, name string) {
				if name == "a" && !swapped {
					swap(t, dirfd, name, outside)
					swapped = true
				}
			}
			defer func() { testHookBeforeOpen = nil }()
			var buf bytes.Buffer
			err := d.ArchivePath(context.Background(), "c1", "/data", &buf)
			if !swapped {
				t.Fatal("the swap hook never ran")
			}
			if err != nil {
				t.Fatalf("archive of /data after a swap: %v (want the rest of the directory)", err)
			}
			names, files := tarEntries(t, buf.Bytes())
			if got, ok := files["data/a"]; ok {
				t.Errorf("data/a was read after it stopped being a regular file: %q", got)
			}
			if strings.Contains(buf.String(), "host secret") {
				t.Errorf("the archive carries host content")
			}
			if files["data/sub/b"] != "bb" {
				t.Errorf("the rest of /data is missing: %q", names)
			}
		})
	}
}

// TestArchivePathSkipsDevices: a device node already in the rootfs is never
// opened by the agent, whether asked for directly or inside a directory.
func TestArchivePathSkipsDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: device nodes need root")
	}
	d, rootfs, _ := archiveFixture(t)
	must(t, unix.Mknod(filepath.Join(rootfs, "data/zero"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 5))))
	for _, p := range []string{"/data", "/data/zero"} {
		var buf bytes.Buffer
		if err := d.ArchivePath(context.Background(), "c1", p, &buf); err != nil {
			t.Fatalf("archive of %s: %v", p, err)
		}
		names, _ := tarEntries(t, buf.Bytes())
		for _, n := range names {
			if strings.HasSuffix(n, "zero") {
				t.Errorf("archive of %s carries the device node %q", p, n)
			}
		}
	}
}

// TestExtractArchiveThroughHostLinks: a PUT whose entries go through a
// symlink to a host directory (as parent or as the target itself), with
// setuid modes, must neither write nor chmod anything on the host.
func TestExtractArchiveThroughHostLinks(t *testing.T) {
	d, rootfs, outside := archiveFixture(t)
	canary := filepath.Join(outside, "secret")
	must(t, os.Chmod(canary, 0o644))
	must(t, os.Symlink(canary, filepath.Join(rootfs, "tmp/canary")))
	ctx := context.Background()
	extract := func(dir string, entries ...*tar.Header) error {
		return d.ExtractArchive(ctx, "c1", dir, makeTar(t, entries...), driver.ArchiveOptions{})
	}
	suid := func(h *tar.Header) *tar.Header { h.Mode = 0o4777; return h }
	extract("/", suid(file("evil/secret", "pwned")), suid(file("evil2/secret", "pwned")))
	extract("/evil", suid(file("secret", "pwned")))
	extract("/tmp", suid(&tar.Header{Name: "canary/", Typeflag: tar.TypeDir}))
	extract("/tmp", suid(&tar.Header{Name: "canary", Typeflag: tar.TypeFifo}))
	extract("/", suid(&tar.Header{Name: "evil/", Typeflag: tar.TypeDir}))
	fi, err := os.Stat(canary)
	if err != nil {
		t.Fatalf("the host file is gone: %v", err)
	}
	if fi.Mode() != 0o644 {
		t.Errorf("host file's mode changed to %v", fi.Mode())
	}
	if b, _ := os.ReadFile(canary); string(b) != "host secret" {
		t.Errorf("host file's content changed to %q", b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Errorf("the host directory was written: %v", ents)
	}
}

// TestExtractArchiveRefusesDevices: uploads with device nodes fail with an
// invalid-argument error that names the entry, and make nothing.
func TestExtractArchiveRefusesDevices(t *testing.T) {
	d, rootfs, _ := archiveFixture(t)
	for _, typ := range []byte{tar.TypeChar, tar.TypeBlock} {
		err := d.ExtractArchive(context.Background(), "c1", "/tmp",
			makeTar(t, &tar.Header{Name: "sda", Typeflag: typ, Mode: 0o666, Devmajor: 8}), driver.ArchiveOptions{})
		if !errdefs.Is(err, errdefs.Invalid) || !strings.Contains(err.Error(), "device") {
			t.Errorf("upload of a device (type %q): %v, want Invalid naming the device", typ, err)
		}
		if _, err := os.Lstat(filepath.Join(rootfs, "tmp/sda")); err == nil {
			t.Errorf("the device node was made (type %q)", typ)
		}
	}
}

// TestResolveUserStaysInRootfs: the image's (or a container's) /etc or
// /etc/passwd as a symlink to the host must not make the agent read the
// host's files.
func TestResolveUserStaysInRootfs(t *testing.T) {
	host := t.TempDir()
	must(t, os.WriteFile(filepath.Join(host, "passwd"), []byte("hostuser:x:4242:4343::/:/bin/sh\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(host, "group"), []byte("hostgroup:x:4444:\n"), 0o644))
	cases := map[string]func(t *testing.T, rootfs string){
		"EtcLinkAbsolute": func(t *testing.T, rootfs string) { must(t, os.Symlink(host, filepath.Join(rootfs, "etc"))) },
		"EtcLinkClimbing": func(t *testing.T, rootfs string) {
			must(t, os.Symlink(strings.Repeat("../", 30)+strings.TrimPrefix(host, "/"), filepath.Join(rootfs, "etc")))
		},
		"PasswdLink": func(t *testing.T, rootfs string) {
			must(t, os.Mkdir(filepath.Join(rootfs, "etc"), 0o755))
			must(t, os.Symlink(filepath.Join(host, "passwd"), filepath.Join(rootfs, "etc/passwd")))
			must(t, os.Symlink(filepath.Join(host, "group"), filepath.Join(rootfs, "etc/group")))
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			rootfs := t.TempDir()
			setup(t, rootfs)
			if u, err := resolveUser(rootfs, "hostuser"); err == nil {
				t.Errorf("resolveUser(hostuser) read the host's passwd: %+v", u)
			}
			if u, err := resolveUser(rootfs, "0:hostgroup"); err == nil {
				t.Errorf("resolveUser(0:hostgroup) read the host's group: %+v", u)
			}
			if u, _ := resolveUser(rootfs, "4242"); u.GID == 4343 {
				t.Errorf("resolveUser(4242) took its gid from the host's passwd: %+v", u)
			}
		})
	}
	t.Run("OKLinkInsideRootfs", func(t *testing.T) {
		rootfs := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(rootfs, "real"), 0o755))
		must(t, os.WriteFile(filepath.Join(rootfs, "real/passwd"), []byte("app:x:1000:1001::/:/bin/sh\n"), 0o644))
		must(t, os.Symlink("/real", filepath.Join(rootfs, "etc")))
		u, err := resolveUser(rootfs, "app")
		if err != nil || u.UID != 1000 || u.GID != 1001 {
			t.Errorf("resolveUser(app) through /etc -> /real = %+v, %v", u, err)
		}
	})
}
