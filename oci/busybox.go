package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/errdefs"
)

// BusyboxCmd is the default command of BusyboxImage: it runs until stopped
// and exits 0 promptly on SIGTERM.
var BusyboxCmd = []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"}

// BusyboxImage builds a one-layer OCI image from the static busybox binary at
// busyboxPath (e.g. /bin/busybox from Debian's busybox-static): /bin/busybox,
// a symlink per applet at the path busybox itself reports, /etc/passwd and
// /etc/group with root and nobody, empty /tmp, /proc, /sys, /dev, /root,
// PATH set and BusyboxCmd as the command. Entries are sorted with zero
// times, so the same binary always gives the same digest. It returns
// NotFound if the binary is missing and Invalid if it is not a busybox.
func BusyboxImage(busyboxPath string) (v1.Image, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, errdefs.NotFoundf("busybox binary %s not found (install busybox-static)", busyboxPath)
		}
		return nil, errdefs.Wrap(errdefs.Internal, err, "read %s", busyboxPath)
	}
	out, err := exec.Command(busyboxPath, "--list-full").Output()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "%s --list-full failed: is it busybox?", busyboxPath)
	}
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	entries := map[string]entry{}
	dir := func(name string, mode int64) {
		entries[name] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
	}
	file := func(name string, mode int64, data []byte) {
		entries[name] = entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data}
	}
	for _, d := range []string{"bin", "dev", "etc", "proc", "root", "sys", "usr", "usr/bin", "usr/sbin", "sbin", "var", "home"} {
		dir(d, 0o755)
	}
	dir("tmp", 0o1777)
	dir("root", 0o700)
	file("bin/busybox", 0o755, bin)
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	file("etc/hostname", 0o644, []byte("busybox\n"))
	for _, line := range strings.Split(string(out), "\n") {
		p := strings.Trim(strings.TrimSpace(line), "/")
		if p == "" || p == "bin/busybox" || strings.Contains(p, "..") {
			continue
		}
		if i := strings.LastIndex(p, "/"); i > 0 {
			if _, ok := entries[p[:i]]; !ok {
				dir(p[:i], 0o755)
			}
		}
		entries[p] = entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: "/bin/busybox", Mode: 0o777}}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime = time.Unix(0, 0)
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "build busybox layer")
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "build busybox layer")
		}
	}
	if err := tw.Close(); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build busybox layer")
	}
	return ImageFromLayerTars(
		v1.Config{Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: BusyboxCmd, WorkingDir: "/"},
		buf.Bytes())
}

// ImageFromLayerTars builds an OCI image (OCI media types, gzip layers,
// linux on the host's architecture) from uncompressed layer tars, bottom
// first, with cfg as its runtime configuration.
func ImageFromLayerTars(cfg v1.Config, layerTars ...[]byte) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i, b := range layerTars {
		b := b
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "make layer %d", i)
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{
			CreatedBy: fmt.Sprintf("flotilla layer %d", i), Created: v1.Time{Time: time.Unix(0, 0)}}})
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "append layer %d", i)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "read image config")
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0)}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "set image config")
	}
	return img, nil
}
