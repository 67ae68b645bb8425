package runc

// What a container changed (driver.Differ: `docker diff`, `docker export`,
// `docker commit`, CloudAPI CreateImageFromMachine). A container's writes
// land in its overlay's upper directory (bundle/upper); the image's layers
// are the lower directories (bundle/lowers, top first), unpacked in overlay
// format, so a deletion is a 0/0 character device and a directory that
// hides what the layers below hold carries trusted.overlay.opaque=y.
//
// The upper directory is written by the container, so it is read as
// archive.go reads a rootfs: every directory is opened relative to its
// parent's fd with O_NOFOLLOW, a symlink is recorded as a symlink and never
// followed, only regular files are read (opened O_PATH, fstat'ed, then
// reopened), and device nodes other than whiteouts are left out. Mount
// points of the runtime spec (/proc, /etc/hosts, volumes) are left out too:
// what the container sees there is not in the upper directory.

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Differ = (*Driver)(nil)

// overlayFS is a container's overlay as the commit code reads it.
type overlayFS struct {
	upper  string
	lowers []string        // top layer first
	mounts map[string]bool // mount destinations, cleaned
}

// overlayOf returns the overlay of container id. It returns NotFound for an
// unknown container and NotImplemented for a copied rootfs, which keeps no
// record of what changed.
func (d *Driver) overlayOf(id string) (*overlayFS, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return nil, err
	}
	lowers, err := os.ReadFile(filepath.Join(bundle, "lowers"))
	if err != nil {
		return nil, errdefs.New(errdefs.NotImplemented,
			"container %s has a copied root filesystem (the node could not use overlayfs), which keeps no record of its changes", id)
	}
	var s specs.Spec
	if err := readJSON(filepath.Join(bundle, fileConfig), &s); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "read runtime spec of %s", id)
	}
	o := &overlayFS{upper: filepath.Join(bundle, "upper"), lowers: strings.Split(string(lowers), ":"), mounts: map[string]bool{}}
	for _, m := range s.Mounts {
		o.mounts[path.Clean("/"+m.Destination)] = true
	}
	return o, nil
}

// mountAncestor reports whether a mount destination lies below p (runc
// made p to mount on it).
func (o *overlayFS) mountAncestor(p string) bool {
	for m := range o.mounts {
		if strings.HasPrefix(m, p+"/") {
			return true
		}
	}
	return false
}

// openUpper opens the upper directory for reading.
func (o *overlayFS) openUpper(id string) (int, error) {
	fd, err := unix.Open(o.upper, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return -1, errdefs.NotFoundf("container %s has no filesystem on this node", id)
	}
	if err != nil {
		return -1, errdefs.Wrap(errdefs.Internal, err, "open the changes of %s", id)
	}
	return fd, nil
}

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// isOpaque reports whether the directory open as fd hides the lower
// layers' content.
func isOpaque(fd int) bool {
	buf := make([]byte, 4)
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Fgetxattr(fd, attr, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

// readNames lists the directory open as fd, sorted (so that a layer made
// twice of the same content has the same digest).
func readNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// openDirAt opens name in dirfd as a directory without following it.
func openDirAt(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// lowerStat looks p up in the image's layers, top first, never following
// a symlink: the first layer that has p (or a whiteout of it) answers.
func (o *overlayFS) lowerStat(p string) (unix.Stat_t, bool) {
	var st unix.Stat_t
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for _, l := range o.lowers {
		fd, err := unix.Open(l, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		found, deleted := false, false
		for i, part := range parts {
			if i == len(parts)-1 {
				if unix.Fstatat(fd, part, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
					found, deleted = true, isWhiteout(&st)
				}
				break
			}
			next, err := unix.Openat(fd, part, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				var pst unix.Stat_t
				if unix.Fstatat(fd, part, &pst, unix.AT_SYMLINK_NOFOLLOW) == nil {
					found, deleted = true, true // a whiteout or non-directory hides the rest
				}
				break
			}
			unix.Close(fd)
			fd = next
		}
		unix.Close(fd)
		if found {
			return st, !deleted
		}
	}
	return st, false
}

// lowerNames lists what the layers hold in directory p (whiteouts and the
// entries they hide left out).
func (o *overlayFS) lowerNames(p string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range o.lowers {
		fd, err := unix.Open(l, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		ok := true
		for _, part := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
			if part == "" {
				continue
			}
			next, err := openDirAt(fd, part)
			unix.Close(fd)
			if err != nil {
				ok = false
				break
			}
			fd = next
		}
		if !ok {
			continue
		}
		names, _ := readNames(fd)
		for _, n := range names {
			if seen[n] {
				continue
			}
			seen[n] = true
			var st unix.Stat_t
			if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && !isWhiteout(&st) {
				out = append(out, n)
			}
		}
		opaque := isOpaque(fd)
		unix.Close(fd)
		if opaque {
			break
		}
	}
	return out
}

// Changes implements driver.Differ. A directory that only holds copied-up
// parents of mount points, or that was copied up unchanged, is not listed;
// one with changes below it is "modified", as Docker lists it.
func (d *Driver) Changes(ctx context.Context, id string) ([]driver.Change, error) {
	o, err := d.overlayOf(id)
	if err != nil {
		return nil, err
	}
	fd, err := o.openUpper(id)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []driver.Change
	if _, err := o.changes(ctx, fd, "/", &out); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// changes appends the changes below directory dir (open as dirfd) and
// returns how many it appended.
func (o *overlayFS) changes(ctx context.Context, dirfd int, dir string, out *[]driver.Change) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	names, err := readNames(dirfd)
	if err != nil {
		return 0, errdefs.Wrap(errdefs.Internal, err, "read directory %s", dir)
	}
	n := 0
	for _, name := range names {
		p := path.Join(dir, name)
		if o.mounts[p] {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // removed meanwhile
		}
		if isWhiteout(&st) {
			*out = append(*out, driver.Change{Path: p, Kind: driver.ChangeDelete})
			n++
			continue
		}
		lst, inLower := o.lowerStat(p)
		kind := driver.ChangeAdd
		if inLower {
			kind = driver.ChangeModify
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			*out = append(*out, driver.Change{Path: p, Kind: kind})
			n++
			continue
		}
		fd, err := openDirAt(dirfd, name)
		if err != nil {
			continue // no longer a directory
		}
		opaque := isOpaque(fd)
		k, err := o.changes(ctx, fd, p, out)
		unix.Close(fd)
		if err != nil {
			return n, err
		}
		if opaque && inLower {
			upperNames := map[string]bool{}
			if fd, err := openDirAt(dirfd, name); err == nil {
				un, _ := readNames(fd)
				unix.Close(fd)
				for _, c := range un {
					upperNames[c] = true
				}
			}
			for _, c := range o.lowerNames(p) {
				if !upperNames[c] && !o.mounts[path.Join(p, c)] {
					*out = append(*out, driver.Change{Path: path.Join(p, c), Kind: driver.ChangeDelete})
					k++
				}
			}
		}
		var report bool
		if inLower {
			report = k > 0 || opaque || lst.Mode != st.Mode || lst.Uid != st.Uid || lst.Gid != st.Gid
		} else {
			report = k > 0 || !o.mountAncestor(p)
		}
		if report {
			*out = append(*out, driver.Change{Path: p, Kind: kind})
			n++
		}
		n += k
	}
	return n, nil
}

// ExportChanges implements driver.Differ.
func (d *Driver) ExportChanges(ctx context.Context, id string, w io.Writer) error {
	o, err := d.overlayOf(id)
	if err != nil {
		return err
	}
	fd, err := o.openUpper(id)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tw := tar.NewWriter(w)
	if err := o.layer(ctx, tw, fd, "/", map[[2]uint64]string{}); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "write the changes of %s", id)
	}
	return nil
}

// layer writes the entries of directory dir (open as dirfd) to tw in OCI
// layer form. links maps an inode with more than one link to the name it
// was first written under, so that hard links stay links.
func (o *overlayFS) layer(ctx context.Context, tw *tar.Writer, dirfd int, dir string, links map[[2]uint64]string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	names, err := readNames(dirfd)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "read directory %s", dir)
	}
	for _, name := range names {
		p := path.Join(dir, name)
		rel := strings.TrimPrefix(p, "/")
		if o.mounts[p] || strings.HasPrefix(name, ".wh.") {
			// A name starting .wh. would read as a whiteout in a layer.
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		hdr := &tar.Header{Name: rel, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
			ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC(), Format: tar.FormatPAX}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			if !isWhiteout(&st) {
				continue // device nodes are not committed
			}
			wh := &tar.Header{Name: path.Join(strings.TrimPrefix(dir, "/"), ".wh."+name), Typeflag: tar.TypeReg,
				Mode: 0o600, ModTime: hdr.ModTime, Format: tar.FormatPAX}
			if err := tw.WriteHeader(wh); err != nil {
				return errdefs.Wrap(errdefs.Unavailable, err, "write layer")
			}
		case unix.S_IFDIR:
			fd, err := openDirAt(dirfd, name)
			if err != nil {
				continue // no longer a directory
			}
			hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
			err = tw.WriteHeader(hdr)
			if err == nil && isOpaque(fd) {
				err = tw.WriteHeader(&tar.Header{Name: rel + "/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o600,
					ModTime: hdr.ModTime, Format: tar.FormatPAX})
			}
			if err != nil {
				unix.Close(fd)
				return errdefs.Wrap(errdefs.Unavailable, err, "write layer")
			}
			err = o.layer(ctx, tw, fd, p, links)
			unix.Close(fd)
			if err != nil {
				return err
			}
		case unix.S_IFLNK:
			target, err := readlinkAt(dirfd, name)
			if err != nil {
				continue
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			if err := tw.WriteHeader(hdr); err != nil {
				return errdefs.Wrap(errdefs.Unavailable, err, "write layer")
			}
		case unix.S_IFIFO:
			hdr.Typeflag = tar.TypeFifo
			if err := tw.WriteHeader(hdr); err != nil {
				return errdefs.Wrap(errdefs.Unavailable, err, "write layer")
			}
		case unix.S_IFREG:
			if err := writeRegular(tw, dirfd, name, hdr, links); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeRegular writes the regular file name of dirfd under hdr.Name, or a
// hard link to an earlier name of the same inode. A file that is no longer
// a regular file is left out.
func writeRegular(tw *tar.Writer, dirfd int, name string, hdr *tar.Header, links map[[2]uint64]string) error {
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(dirfd, name)
	}
	f, ok, err := openRegular(dirfd, name)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open %s", hdr.Name)
	}
	if !ok {
		return nil
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "stat %s", hdr.Name)
	}
	hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, st.Size, int64(st.Mode&0o7777)
	hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
	hdr.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC()
	if st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Size, hdr.Linkname = tar.TypeLink, 0, first
			if err := tw.WriteHeader(hdr); err != nil {
				return errdefs.Wrap(errdefs.Unavailable, err, "write layer")
			}
			return nil
		}
		links[key] = hdr.Name
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "write layer")
	}
	// A file that grew since the stat is cut at the stat's size; one that
	// shrank fails (the tar would be malformed).
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "read %s", hdr.Name)
	}
	return nil
}

// ExportFilesystem implements driver.Differ: the merged filesystem, read
// as archive.go reads it for `docker cp`.
func (d *Driver) ExportFilesystem(ctx context.Context, id string, w io.Writer) error {
	rootfs, err := d.rootfsOf(id)
	if err != nil {
		return err
	}
	fd, err := unix.Open(rootfs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open the filesystem of %s", id)
	}
	defer unix.Close(fd)
	names, err := readNames(fd)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "read the filesystem of %s", id)
	}
	names = slices.DeleteFunc(names, func(n string) bool { return n == "." || n == ".." })
	tw := tar.NewWriter(w)
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if err := archiveAt(ctx, tw, fd, n, n, &st); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "write the export of %s", id)
	}
	return nil
}
