package qemu

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// Labels and annotations of the VM image format (see the package doc).
const (
	LabelVMFormat  = driver.VMFormatLabel
	LabelVMCmdline = "io.flotilla.vm.cmdline"

	FormatDisk   = "disk"
	FormatKernel = "kernel"

	FileDisk   = "disk.qcow2"
	FileKernel = "vmlinuz"
	FileInitrd = "initrd.img"
)

// VMFiles names the host files a VM image is built from: either Disk, or
// Kernel and Initrd (with an optional kernel command line).
type VMFiles struct {
	Disk    string // a qcow2 file
	Kernel  string
	Initrd  string
	Cmdline string
}

// NewVMImage builds a VM image (an OCI image in the format of the package
// doc) from files. It returns Invalid for a combination that is neither a
// disk nor a kernel pair, and NotFound for a missing file.
func NewVMImage(files VMFiles) (v1.Image, error) {
	var format string
	var entries [][2]string // name in layer, host path
	switch {
	case files.Disk != "" && files.Kernel == "" && files.Initrd == "":
		format = FormatDisk
		entries = [][2]string{{FileDisk, files.Disk}}
	case files.Disk == "" && files.Kernel != "" && files.Initrd != "":
		format = FormatKernel
		entries = [][2]string{{FileKernel, files.Kernel}, {FileInitrd, files.Initrd}}
	default:
		return nil, errdefs.InvalidArgument("a VM image has either a disk, or a kernel and an initrd")
	}
	if format == FormatDisk && files.Cmdline != "" {
		return nil, errdefs.InvalidArgument("a kernel command line needs a kernel image, not a disk")
	}
	for _, e := range entries {
		if _, err := os.Stat(e[1]); err != nil {
			return nil, errdefs.Wrap(errdefs.NotFound, err, "VM image file %s", e[1])
		}
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return tarFiles(entries), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build VM image layer")
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "flotilla NewVMImage (" + format + ")"}})
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build VM image")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build VM image config")
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	labels := map[string]string{LabelVMFormat: format}
	if files.Cmdline != "" {
		labels[LabelVMCmdline] = files.Cmdline
	}
	cf.Config.Labels = labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build VM image config")
	}
	return mutate.Annotations(img, map[string]string{LabelVMFormat: format}).(v1.Image), nil
}

// tarFiles streams a tar of entries (name, host path) with fixed metadata so
// that the same files give the same digest.
func tarFiles(entries [][2]string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		for _, e := range entries {
			if err := tarFile(tw, e[0], e[1]); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	return pr
}

func tarFile(tw *tar.Writer, name, hostPath string) error {
	f, err := os.Open(hostPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: st.Size(), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// vmImage is an unpacked VM image in the driver's image cache.
type vmImage struct {
	Format  string
	Dir     string
	Cmdline string
}

func (v vmImage) path(file string) string { return filepath.Join(v.Dir, file) }

// imageFormat returns the VM format and kernel command line of cf. It
// returns Invalid for an image that is not a VM image.
func imageFormat(cf *v1.ConfigFile) (format, cmdline string, err error) {
	if cf == nil {
		return "", "", errdefs.InvalidArgument("image has no config")
	}
	format = cf.Config.Labels[LabelVMFormat]
	switch format {
	case FormatDisk, FormatKernel:
	case "":
		return "", "", errdefs.InvalidArgument("image is not a VM image: its config has no %s label (build VM images with NewVMImage)", LabelVMFormat)
	default:
		return "", "", errdefs.InvalidArgument("unknown VM image format %q in label %s (want %s or %s)", format, LabelVMFormat, FormatDisk, FormatKernel)
	}
	return format, cf.Config.Labels[LabelVMCmdline], nil
}

// unpackVMImage writes the VM files of img into dir (which must not exist
// yet; the caller renames it into place). It returns Invalid when the image
// lacks a file its format needs.
func unpackVMImage(ctx context.Context, img v1.Image, dir string) (vmImage, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return vmImage{}, errdefs.Wrap(errdefs.Invalid, err, "read image config")
	}
	format, cmdline, err := imageFormat(cf)
	if err != nil {
		return vmImage{}, err
	}
	want := map[string]bool{FileDisk: format == FormatDisk, FileKernel: format == FormatKernel, FileInitrd: format == FormatKernel}
	layers, err := img.Layers()
	if err != nil {
		return vmImage{}, errdefs.Wrap(errdefs.Unavailable, err, "read image layers")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return vmImage{}, errdefs.Wrap(errdefs.Internal, err, "create %s", dir)
	}
	got := map[string]bool{}
	for _, l := range layers {
		if err := ctx.Err(); err != nil {
			return vmImage{}, errdefs.Wrap(errdefs.Unavailable, err, "unpack VM image")
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return vmImage{}, errdefs.Wrap(errdefs.Unavailable, err, "read image layer")
		}
		err = func() error {
			defer rc.Close()
			tr := tar.NewReader(rc)
			for {
				h, err := tr.Next()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return errdefs.Wrap(errdefs.Invalid, err, "read image layer")
				}
				name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
				if h.Typeflag != tar.TypeReg || !want[name] {
					continue
				}
				if err := copyToFile(filepath.Join(dir, name), tr); err != nil {
					return err
				}
				got[name] = true
			}
		}()
		if err != nil {
			return vmImage{}, err
		}
	}
	for name, w := range want {
		if w && !got[name] {
			return vmImage{}, errdefs.InvalidArgument("VM image of format %s has no %s in its layers", format, name)
		}
	}
	return vmImage{Format: format, Dir: dir, Cmdline: cmdline}, nil
}

func copyToFile(dst string, r io.Reader) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create %s", dst)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write %s", dst)
	}
	return nil
}
