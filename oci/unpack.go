package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"flotilla/api/errdefs"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// UnpackOptions change how a layer is written.
type UnpackOptions struct {
	// Overlay writes the layer for use as an overlayfs lower directory
	// instead of applying it to what is already there: a whiteout becomes a
	// 0:0 character device and an opaque directory gets the
	// trusted.overlay.opaque xattr. Use it to unpack each layer into its own
	// empty directory.
	Overlay bool
}

// UnpackImage applies the layers of img, bottom first, to the directory
// rootfs (created if missing).
func UnpackImage(ctx context.Context, img v1.Image, rootfs string) error {
	layers, err := img.Layers()
	if err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "read image layers")
	}
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create rootfs %s", rootfs)
	}
	for i, l := range layers {
		if err := UnpackLayer(ctx, l, rootfs, UnpackOptions{}); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

// UnpackLayer reads layer's uncompressed content (which go-containerregistry
// verifies against the layer's digest while it is read) and applies it to dir.
func UnpackLayer(ctx context.Context, layer v1.Layer, dir string, opts UnpackOptions) error {
	rc, err := layer.Uncompressed()
	if err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "open layer")
	}
	defer rc.Close()
	if err := Unpack(ctx, rc, dir, opts); err != nil {
		return err
	}
	// Drain what follows the tar's end so the digest check runs.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "verify layer")
	}
	return nil
}

// Unpack applies one uncompressed layer tar to the existing directory root.
// Nothing is ever written outside root: entry names containing ".." are
// rejected, every parent directory is resolved inside root (symlinks,
// including absolute ones, are followed as if root were /), the final
// component is never followed, and hardlinks must point inside root. Owner,
// mode and times are set on the opened entry, never through its name.
// Character and block devices are refused. Whiteout
// files delete what lower layers put there and opaque markers empty a
// directory (unless opts.Overlay). Hardlinks to files that come later in the
// same tar are made at the end. It returns Invalid for a malformed or
// hostile layer.
func Unpack(ctx context.Context, r io.Reader, root string, opts UnpackOptions) error {
	rootDir, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open rootfs %s", root)
	}
	defer rootDir.Close()
	u := &unpacker{root: rootDir, opts: opts, isRoot: os.Geteuid() == 0,
		written: map[string]bool{}, ancestors: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "read layer tar")
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	for _, h := range u.pendingLinks {
		if err := u.hardlink(h, true); err != nil {
			return err
		}
	}
	return nil
}

type unpacker struct {
	root         *os.File
	opts         UnpackOptions
	isRoot       bool
	written      map[string]bool // entries this layer wrote (cleaned, relative)
	ancestors    map[string]bool // their parent directories
	pendingLinks []*tar.Header
}

// cleanName validates a tar path and returns it relative, without a leading
// "/" or "./" (e.g. "etc/passwd"); "" means the root itself.
func cleanName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", errdefs.InvalidArgument("layer entry %q contains a NUL byte", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errdefs.InvalidArgument("layer entry %q climbs out of the root with ..", name)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+name), "/")
	return c, nil
}

func (u *unpacker) record(name string) {
	u.written[name] = true
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		u.ancestors[d] = true
	}
}

// parent creates (inside root) and opens the directory that holds name.
func (u *unpacker) parent(name string) (*os.File, error) {
	dir := path.Dir(name)
	if dir == "." {
		dir = "/"
	}
	f, err := pathrs.MkdirAllHandle(u.root, dir, 0o755)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "make parent directory of layer entry %q", name)
	}
	return f, nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "" {
		return nil // the root directory itself: keep the rootfs's own mode
	}
	base := path.Base(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(name, base)
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil
	case tar.TypeLink:
		if err := u.hardlink(hdr, false); err != nil {
			return err
		}
		u.record(name)
		return nil
	}
	dir, err := u.parent(name)
	if err != nil {
		return err
	}
	defer dir.Close()
	fd := int(dir.Fd())
	mode := uint32(hdr.Mode) & 0o7777

	// Every entry but a symlink is opened once made, and its owner, mode and
	// times are set through that descriptor: a container racing the unpack
	// (docker cp into a running container) may swap the name for a symlink
	// meanwhile, and a path-based chmod would follow it to the host.
	var obj *os.File
	switch hdr.Typeflag {
	case tar.TypeDir:
		var st unix.Stat_t
		if err := unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			// Keep the directory (and what lower layers put in it).
		} else {
			if err := removeAt(fd, base); err != nil {
				return u.failed(name, err)
			}
			if err := unix.Mkdirat(fd, base, 0o700); err != nil {
				return u.failed(name, err)
			}
		}
		if testHookCreated != nil {
			testHookCreated(fd, base)
		}
		dfd, err := unix.Openat(fd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return u.failed(name, err)
		}
		obj = os.NewFile(uintptr(dfd), name)
	case tar.TypeReg, tar.TypeRegA:
		if err := removeAt(fd, base); err != nil {
			return u.failed(name, err)
		}
		nfd, err := unix.Openat(fd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return u.failed(name, err)
		}
		obj = os.NewFile(uintptr(nfd), name)
		if _, err := io.Copy(obj, r); err != nil {
			obj.Close()
			return errdefs.Wrap(errdefs.Invalid, err, "write layer file %q", name)
		}
		if testHookCreated != nil {
			testHookCreated(fd, base)
		}
	case tar.TypeSymlink:
		if err := removeAt(fd, base); err != nil {
			return u.failed(name, err)
		}
		if err := unix.Symlinkat(hdr.Linkname, fd, base); err != nil {
			return u.failed(name, err)
		}
	case tar.TypeChar, tar.TypeBlock:
		return errdefs.InvalidArgument("entry %q is a device node (%d:%d); device nodes are refused in images and "+
			"copied archives (containers get their devices from the runtime): remove it from the archive",
			hdr.Name, hdr.Devmajor, hdr.Devminor)
	case tar.TypeFifo:
		if err := removeAt(fd, base); err != nil {
			return u.failed(name, err)
		}
		if err := unix.Mknodat(fd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return u.failed(name, err)
		}
		if testHookCreated != nil {
			testHookCreated(fd, base)
		}
		// O_PATH: opening a fifo for reading or writing would block.
		pfd, err := unix.Openat(fd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return u.failed(name, err)
		}
		obj = os.NewFile(uintptr(pfd), name)
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			obj.Close()
			return errdefs.InvalidArgument("layer entry %q was replaced while it was unpacked", name)
		}
	default:
		return nil // unknown entry types are ignored, as Docker does
	}
	u.record(name)
	if obj == nil {
		return u.symlinkAttrs(fd, base, hdr)
	}
	defer obj.Close()
	if err := u.attrs(obj, hdr.Typeflag == tar.TypeFifo, hdr, mode); err != nil {
		return err
	}
	return obj.Close()
}

// testHookCreated, when set by a test, runs after an entry is created and
// before it is opened to set its owner, mode and times: where a container
// racing the unpack would swap the entry.
var testHookCreated func(dirfd int, base string)

// attrs sets owner, mode and times on the open entry f. An O_PATH
// descriptor (isPath) refuses fchmod, so its mode goes through its
// /proc/self/fd link, which names the very inode f holds (as do the times,
// which have no descriptor-only call in x/sys).
func (u *unpacker) attrs(f *os.File, isPath bool, hdr *tar.Header, mode uint32) error {
	fd := int(f.Fd())
	if u.isRoot {
		if err := unix.Fchownat(fd, "", hdr.Uid, hdr.Gid, unix.AT_EMPTY_PATH); err != nil && !errors.Is(err, unix.EINVAL) {
			return u.failed(hdr.Name, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	proc := fmt.Sprintf("/proc/self/fd/%d", fd)
	// After chown, which clears setuid bits.
	if isPath {
		if err := unix.Fchmodat(unix.AT_FDCWD, proc, mode, 0); err != nil {
			return u.failed(hdr.Name, err)
		}
	} else if err := unix.Fchmod(fd, mode); err != nil {
		return u.failed(hdr.Name, err)
	}
	_ = unix.UtimesNanoAt(unix.AT_FDCWD, proc, ts, 0) // best effort
	return nil
}

// symlinkAttrs sets a symlink's owner and times; it has no mode of its own,
// and neither call follows it.
func (u *unpacker) symlinkAttrs(fd int, base string, hdr *tar.Header) error {
	if u.isRoot {
		if err := unix.Fchownat(fd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
			return u.failed(hdr.Name, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	_ = unix.UtimesNanoAt(fd, base, ts, unix.AT_SYMLINK_NOFOLLOW) // best effort
	return nil
}

func (u *unpacker) hardlink(hdr *tar.Header, final bool) error {
	name, _ := cleanName(hdr.Name)
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return err
	}
	if target == "" {
		return errdefs.InvalidArgument("layer hardlink %q points at the root directory", hdr.Name)
	}
	tdir, err := pathrs.OpenatInRoot(u.root, path.Dir("/"+target))
	if err != nil {
		if !final && errors.Is(err, os.ErrNotExist) {
			u.pendingLinks = append(u.pendingLinks, hdr)
			return nil
		}
		return errdefs.Wrap(errdefs.Invalid, err, "layer hardlink %q -> %q", hdr.Name, hdr.Linkname)
	}
	defer tdir.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(tdir.Fd()), path.Base(target), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !final && errors.Is(err, unix.ENOENT) {
			u.pendingLinks = append(u.pendingLinks, hdr)
			return nil
		}
		return errdefs.Wrap(errdefs.Invalid, err, "layer hardlink %q -> %q: target missing", hdr.Name, hdr.Linkname)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return errdefs.InvalidArgument("layer hardlink %q points at directory %q", hdr.Name, hdr.Linkname)
	}
	dir, err := u.parent(name)
	if err != nil {
		return err
	}
	defer dir.Close()
	base := path.Base(name)
	if err := removeAt(int(dir.Fd()), base); err != nil {
		return u.failed(name, err)
	}
	// No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
	if err := unix.Linkat(int(tdir.Fd()), path.Base(target), int(dir.Fd()), base, 0); err != nil {
		return u.failed(name, err)
	}
	return nil
}

func (u *unpacker) whiteout(name, base string) error {
	dir := path.Dir(name)
	if dir == "." {
		dir = ""
	}
	if base == opaqueMarker {
		d, err := pathrs.MkdirAllHandle(u.root, "/"+dir, 0o755)
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "opaque directory %q", dir)
		}
		defer d.Close()
		if u.opts.Overlay {
			dfd, err := unix.Openat(int(d.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return u.failed(name, err)
			}
			defer unix.Close(dfd)
			if err := unix.Fsetxattr(dfd, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
				return u.failed(name, err)
			}
			return nil
		}
		return u.clearExcept(int(d.Fd()), dir)
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return errdefs.InvalidArgument("layer whiteout %q names no file", name)
	}
	if u.opts.Overlay {
		d, err := pathrs.MkdirAllHandle(u.root, "/"+dir, 0o755)
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "whiteout %q", name)
		}
		defer d.Close()
		if err := removeAt(int(d.Fd()), victim); err != nil {
			return u.failed(name, err)
		}
		if err := unix.Mknodat(int(d.Fd()), victim, unix.S_IFCHR, 0); err != nil {
			return u.failed(name, err)
		}
		return nil
	}
	d, err := pathrs.OpenatInRoot(u.root, "/"+dir)
	if err != nil {
		return nil // the parent does not exist, so neither does the victim
	}
	defer d.Close()
	if err := removeAt(int(d.Fd()), victim); err != nil {
		return u.failed(name, err)
	}
	return nil
}

// clearExcept empties the directory open as fd (at rel) of everything this
// layer did not write.
func (u *unpacker) clearExcept(fd int, rel string) error {
	names, err := readDirNames(fd)
	if err != nil {
		return u.failed(rel, err)
	}
	for _, n := range names {
		p := path.Join(rel, n)
		switch {
		case u.ancestors[p]:
			sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return u.failed(p, err)
			}
			err = u.clearExcept(sub, p)
			unix.Close(sub)
			if err != nil {
				return err
			}
		case u.written[p]:
		default:
			if err := removeAt(fd, n); err != nil {
				return u.failed(p, err)
			}
		}
	}
	return nil
}

func (u *unpacker) failed(name string, err error) error {
	return errdefs.Wrap(errdefs.Invalid, err, "unpack layer entry %q", name)
}

func readDirNames(fd int) ([]string, error) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dfd), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAt removes name (recursively if it is a directory) from the
// directory open as fd, never following symlinks. A missing name is fine.
func removeAt(fd int, name string) error {
	err := unix.Unlinkat(fd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(sub)
	if err == nil {
		for _, n := range names {
			if err = removeAt(sub, n); err != nil {
				break
			}
		}
	}
	unix.Close(sub)
	if err != nil {
		return err
	}
	return unix.Unlinkat(fd, name, unix.AT_REMOVEDIR)
}
