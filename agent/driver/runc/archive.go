package runc

// Copying files in and out of a container (driver.Archiver, `docker cp`).
// The container's filesystem is the bundle's rootfs directory on the host;
// it is read and written from the host, never by entering the container.
//
// Every path is resolved inside the rootfs with filepath-securejoin's
// handle-based pathrs-lite (symlinks, absolute ones included, are followed
// as if the rootfs were /), and below the handle everything is opened
// relative to a directory fd with O_NOFOLLOW, so a container that swaps a
// directory for a symlink meanwhile cannot point the agent at the host.
// Only regular files are read, and only after fstat of the opened handle
// says so (a file swapped for a device, fifo or symlink is left out);
// device nodes are neither archived nor extracted.
// Extraction goes through oci.Unpack with the archive's names moved under
// the target directory: the same checks as image layers (no "..", hardlinks
// inside the root, the final component never followed).

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/oci"
)

var _ driver.Archiver = (*Driver)(nil)

// rootfsOf returns the mounted rootfs of a container; NotFound if the
// container does not exist.
func (d *Driver) rootfsOf(id string) (string, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return "", err
	}
	// A node that rebooted has the overlay unmounted until the next start.
	if err := mountOverlay(bundle); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "mount rootfs of %s", id)
	}
	return filepath.Join(bundle, dirRootfs), nil
}

// splitPath splits a container path into its parent directory and base
// name; the root is ("/", "/"). A path ending in "/." keeps "." as its base
// (the directory's contents, for `docker cp C:/dir/. dst`).
func splitPath(p string) (dir, base string) {
	if p == "" {
		p = "/"
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	if strings.HasSuffix(p, "/.") {
		return path.Clean(p), "."
	}
	c := path.Clean(p)
	if c == "/" {
		return "/", "/"
	}
	return path.Dir(c), path.Base(c)
}

// lookup opens (O_PATH) the parent directory of p inside rootfs and stats
// p's final component without following it. For "/" and "dir/." the
// parent is the directory itself and the name is ".".
func lookup(rootfs, p string) (parent *os.File, name string, st unix.Stat_t, err error) {
	dir, base := splitPath(p)
	name = base
	if base == "/" || base == "." {
		dir, name = path.Clean("/"+p), "."
	}
	parent, err = pathrs.OpenInRoot(rootfs, dir)
	if err != nil {
		return nil, "", st, pathError(p, err)
	}
	if err := unix.Fstatat(int(parent.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		parent.Close()
		return nil, "", st, pathError(p, err)
	}
	return parent, name, st, nil
}

func pathError(p string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errdefs.Wrap(errdefs.NotFound, err, "no such file or directory: %s", p)
	case errors.Is(err, unix.ENOTDIR):
		return errdefs.Wrap(errdefs.NotFound, err, "not a directory: %s", p)
	}
	return errdefs.Wrap(errdefs.Internal, err, "resolve %s in the container", p)
}

func fileMode(st *unix.Stat_t) os.FileMode {
	m := os.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= os.ModeDir
	case unix.S_IFLNK:
		m |= os.ModeSymlink
	case unix.S_IFIFO:
		m |= os.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= os.ModeSocket
	case unix.S_IFCHR:
		m |= os.ModeDevice | os.ModeCharDevice
	case unix.S_IFBLK:
		m |= os.ModeDevice
	}
	if st.Mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if st.Mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// StatPath implements driver.Archiver.
func (d *Driver) StatPath(ctx context.Context, id, p string) (driver.PathStat, error) {
	rootfs, err := d.rootfsOf(id)
	if err != nil {
		return driver.PathStat{}, err
	}
	parent, name, st, err := lookup(rootfs, p)
	if err != nil {
		return driver.PathStat{}, err
	}
	defer parent.Close()
	_, base := splitPath(p)
	ps := driver.PathStat{Name: base, Size: st.Size, Mode: fileMode(&st),
		Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)}
	if ps.Mode&os.ModeSymlink != 0 {
		ps.LinkTarget, _ = readlinkAt(int(parent.Fd()), name)
	}
	return ps, nil
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// ArchivePath implements driver.Archiver: entries are named after p's base
// name ("." for "dir/.", so that the caller gets the contents).
func (d *Driver) ArchivePath(ctx context.Context, id, p string, w io.Writer) error {
	rootfs, err := d.rootfsOf(id)
	if err != nil {
		return err
	}
	parent, name, st, err := lookup(rootfs, p)
	if err != nil {
		return err
	}
	defer parent.Close()
	// O_PATH handles cannot be read: reopen the parent as a directory.
	pfd, err := unix.Openat(int(parent.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathError(p, err)
	}
	defer unix.Close(pfd)
	_, base := splitPath(p)
	if base == "/" {
		base = "."
	}
	tw := tar.NewWriter(w)
	if err := archiveAt(ctx, tw, pfd, name, base, &st); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "write archive of %s", p)
	}
	return nil
}

// archiveAt writes the entry name of directory dirfd (already stat'ed) as
// tarName, and for a directory everything below it.
func archiveAt(ctx context.Context, tw *tar.Writer, dirfd int, name, tarName string, st *unix.Stat_t) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	mode := fileMode(st)
	hdr := &tar.Header{Name: tarName, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec), Format: tar.FormatPAX}
	switch {
	case mode.IsDir():
		hdr.Typeflag, hdr.Name = tar.TypeDir, tarName+"/"
	case mode.IsRegular():
		hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
	case mode&os.ModeSymlink != 0:
		hdr.Typeflag = tar.TypeSymlink
		target, err := readlinkAt(dirfd, name)
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "read link %s", tarName)
		}
		hdr.Linkname = target
	case mode&os.ModeNamedPipe != 0:
		hdr.Typeflag = tar.TypeFifo
	default:
		return nil // devices and sockets are not copied
	}
	switch hdr.Typeflag {
	case tar.TypeReg:
		if testHookBeforeOpen != nil {
			testHookBeforeOpen(dirfd, name)
		}
		f, ok, err := openRegular(dirfd, name)
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "open %s", tarName)
		}
		if !ok {
			return nil // no longer a regular file: left out, as devices are
		}
		defer f.Close()
		var fst unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "stat %s", tarName)
		}
		hdr.Size, hdr.Mode = fst.Size, int64(fst.Mode&0o7777)
		hdr.Uid, hdr.Gid = int(fst.Uid), int(fst.Gid)
		hdr.ModTime = time.Unix(fst.Mtim.Sec, fst.Mtim.Nsec)
		if err := tw.WriteHeader(hdr); err != nil {
			return errdefs.Wrap(errdefs.Unavailable, err, "write archive")
		}
		// A file that grew since the stat is cut at the stat's size; one that
		// shrank fails the archive (the tar would be malformed).
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return errdefs.Wrap(errdefs.Unavailable, err, "archive %s", tarName)
		}
		return nil
	case tar.TypeDir:
		if err := tw.WriteHeader(hdr); err != nil {
			return errdefs.Wrap(errdefs.Unavailable, err, "write archive")
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "open directory %s", tarName)
		}
		dir := os.NewFile(uintptr(fd), tarName)
		defer dir.Close()
		names, err := dir.Readdirnames(-1)
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "read directory %s", tarName)
		}
		for _, n := range names {
			var cst unix.Stat_t
			if err := unix.Fstatat(fd, n, &cst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // removed meanwhile
				}
				return errdefs.Wrap(errdefs.Internal, err, "stat %s/%s", tarName, n)
			}
			if err := archiveAt(ctx, tw, fd, n, path.Join(tarName, n), &cst); err != nil {
				return err
			}
		}
		return nil
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "write archive")
	}
	return nil
}

// openRegular opens name in dirfd for reading if it is a regular file;
// ok is false (and f nil) if it is anything else or gone. The name is first
// opened O_PATH without following it, so that opening never touches a
// device, fifo or socket, and only an inode that fstat shows to be a
// regular file is reopened for reading: whatever the container swaps in
// meanwhile, the agent reads a regular file of the rootfs or nothing.
func openRegular(dirfd int, name string) (f *os.File, ok bool, err error) {
	pfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	h := os.NewFile(uintptr(pfd), name)
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, false, nil
	}
	f, err = pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, false, err
	}
	return f, true, nil
}

// testHookBeforeOpen, when set by a test, runs between the stat of a file
// and its opening: where a container racing the archive swaps it.
var testHookBeforeOpen func(dirfd int, name string)

// ExtractArchive implements driver.Archiver. Entries are owned by the
// container's root, as dockerd does without copyUIDGID.
func (d *Driver) ExtractArchive(ctx context.Context, id, dir string, r io.Reader, opts driver.ArchiveOptions) error {
	rootfs, err := d.rootfsOf(id)
	if err != nil {
		return err
	}
	h, err := pathrs.OpenInRoot(rootfs, dir)
	if err != nil {
		return pathError(dir, err)
	}
	var st unix.Stat_t
	err = unix.Fstat(int(h.Fd()), &st)
	h.Close()
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "stat %s", dir)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return errdefs.InvalidArgument("extraction point is not a directory: %s", dir)
	}
	// The archive's names are moved under dir (as the container resolves
	// it) so that oci.Unpack resolves every parent inside the rootfs.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := oci.Unpack(ctx, pr, rootfs, oci.UnpackOptions{})
		if err == nil {
			io.Copy(io.Discard, pr) // the end-of-archive padding
		}
		pr.CloseWithError(err)
		done <- err
	}()
	err = rebase(ctx, r, pw, rootfs, dir, opts)
	pw.CloseWithError(err)
	uerr := <-done
	if err != nil && (uerr == nil || !errors.Is(err, uerr)) {
		return err // refused here; Unpack only saw the pipe close
	}
	return uerr
}

// rebase copies the tar r to w with every name (and hardlink target) under
// dir, owned by 0:0. It refuses names that climb with "..", whiteout names
// (oci.Unpack would delete files for them) and, with NoOverwriteDirNonDir,
// entries that would replace a directory by a non-directory or the other
// way round.
func rebase(ctx context.Context, r io.Reader, w io.Writer, rootfs, dir string, opts driver.ArchiveOptions) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "read archive")
		}
		switch hdr.Typeflag {
		case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
			continue
		}
		name, err := archiveName(hdr.Name)
		if err != nil {
			return err
		}
		if strings.HasPrefix(path.Base(name), ".wh.") {
			return errdefs.InvalidArgument("archive entry %q: whiteout names cannot be copied", hdr.Name)
		}
		hdr.Name = path.Join(dir, name)
		if hdr.Typeflag == tar.TypeLink {
			target, err := archiveName(hdr.Linkname)
			if err != nil {
				return err
			}
			hdr.Linkname = path.Join(dir, target)
		}
		if opts.NoOverwriteDirNonDir {
			if err := checkOverwrite(rootfs, hdr); err != nil {
				return err
			}
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		hdr.PAXRecords = nil
		if err := tw.WriteHeader(hdr); err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "archive entry %q", hdr.Name)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "read archive entry %q", hdr.Name)
		}
	}
	return tw.Close()
}

// archiveName cleans an entry name relative to the extraction point and
// refuses one that climbs out of it.
func archiveName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", errdefs.InvalidArgument("archive entry %q contains a NUL byte", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errdefs.InvalidArgument("archive entry %q climbs out of the extraction point with ..", name)
		}
	}
	return strings.TrimPrefix(path.Clean("/"+name), "/"), nil
}

// checkOverwrite returns Invalid when hdr would replace a directory by a
// non-directory or the other way round (dockerd's wording).
func checkOverwrite(rootfs string, hdr *tar.Header) error {
	parent, err := pathrs.OpenInRoot(rootfs, path.Dir(hdr.Name))
	if err != nil {
		return nil // a new directory: nothing is overwritten
	}
	defer parent.Close()
	var st unix.Stat_t
	if unix.Fstatat(int(parent.Fd()), path.Base(hdr.Name), &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return nil
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	switch {
	case isDir && hdr.Typeflag != tar.TypeDir:
		return errdefs.InvalidArgument("cannot overwrite directory %q with non-directory %q", hdr.Name, hdr.Name)
	case !isDir && hdr.Typeflag == tar.TypeDir:
		return errdefs.InvalidArgument("cannot overwrite non-directory %q with directory %q", hdr.Name, hdr.Name)
	}
	return nil
}
