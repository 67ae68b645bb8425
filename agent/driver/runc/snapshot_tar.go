package runc

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A snapshot archive is a PAX tar of a directory exactly as it is on disk:
// owners, modes, times, hard links, device nodes (overlayfs whiteouts are
// 0:0 character devices) and extended attributes of every namespace
// (trusted.overlay.opaque marks an opaque directory), so that unpacking it
// as root gives back the same upper directory.

const xattrPAXPrefix = "SCHILY.xattr."

// snapshotArchive writes the tree at src to the file dst and returns the
// file's size. dst is synced before it returns.
func snapshotArchive(src, dst string) (int64, error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	links := map[[2]uint64]string{} // (dev, inode) -> first path, for hard links
	err = filepath.WalkDir(src, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		return snapshotAddEntry(tw, path, filepath.ToSlash(rel), links)
	})
	if err != nil {
		return 0, err
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), f.Close()
}

// snapshotAddEntry writes one file, directory, link or node to tw.
func snapshotAddEntry(tw *tar.Writer, path, name string, links map[[2]uint64]string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("lstat %s: %w", path, err)
	}
	hdr := &tar.Header{
		Name:       name,
		Mode:       int64(st.Mode & 0o7777),
		Uid:        int(st.Uid),
		Gid:        int(st.Gid),
		ModTime:    time.Unix(st.Mtim.Unix()),
		AccessTime: time.Unix(st.Atim.Unix()),
		Format:     tar.FormatPAX,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	case unix.S_IFREG:
		hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = name
			}
		}
	default:
		return nil // sockets live only as long as their process
	}
	xattrs, err := snapshotXattrs(path)
	if err != nil {
		return err
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = map[string]string{}
		for k, v := range xattrs {
			hdr.PAXRecords[xattrPAXPrefix+k] = v
		}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// snapshotXattrs reads every extended attribute of path (not following a
// symbolic link).
func snapshotXattrs(path string) (map[string]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if errors.Is(err, unix.ERANGE) {
		sz, err2 := unix.Llistxattr(path, nil)
		if err2 != nil {
			return nil, err2
		}
		buf = make([]byte, sz)
		n, err = unix.Llistxattr(path, buf)
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", path, err)
	}
	out := map[string]string{}
	for _, key := range strings.Split(string(buf[:n]), "\x00") {
		if key == "" {
			continue
		}
		sz, err := unix.Lgetxattr(path, key, nil)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			return nil, fmt.Errorf("read xattr %s of %s: %w", key, path, err)
		}
		val := make([]byte, sz)
		sz, err = unix.Lgetxattr(path, key, val)
		if err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", key, path, err)
		}
		out[key] = string(val[:sz])
	}
	return out, nil
}

// snapshotExtract unpacks the archive src (written by snapshotArchive)
// into the empty directory dst, with owners, modes, times, nodes and
// extended attributes. Names that would leave dst are refused.
func snapshotExtract(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
	type dirTimes struct {
		path string
		hdr  *tar.Header
	}
	var dirs []dirTimes
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if !filepath.IsLocal(name) {
			return fmt.Errorf("archive entry %q is outside the directory", hdr.Name)
		}
		path := filepath.Join(dst, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
		case tar.TypeReg:
			out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", hdr.Name, err)
			}
		case tar.TypeLink:
			if !filepath.IsLocal(hdr.Linkname) {
				return fmt.Errorf("archive hard link %q points outside the directory", hdr.Name)
			}
			if err := os.Link(filepath.Join(dst, hdr.Linkname), path); err != nil {
				return err
			}
			continue // shares the first name's inode and attributes
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, path); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			mode := uint32(unix.S_IFIFO)
			switch hdr.Typeflag {
			case tar.TypeChar:
				mode = unix.S_IFCHR
			case tar.TypeBlock:
				mode = unix.S_IFBLK
			}
			dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
			if err := unix.Mknod(path, mode|0o600, int(dev)); err != nil {
				return fmt.Errorf("mknod %s: %w", hdr.Name, err)
			}
		default:
			return fmt.Errorf("archive entry %q has unsupported type %q", hdr.Name, hdr.Typeflag)
		}
		if err := snapshotApplyAttrs(path, hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTimes{path, hdr})
		}
	}
	// A directory's times change while its entries are made: set them last,
	// deepest first.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := snapshotSetTimes(dirs[i].path, dirs[i].hdr); err != nil {
			return err
		}
	}
	return nil
}

// snapshotApplyAttrs sets owner, mode, extended attributes and (but for
// directories, done last) times of path from hdr.
func snapshotApplyAttrs(path string, hdr *tar.Header) error {
	if err := unix.Lchown(path, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown %s: %w", hdr.Name, err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// After chown, which clears set-user-ID and set-group-ID bits.
		if err := unix.Chmod(path, uint32(hdr.Mode&0o7777)); err != nil {
			return fmt.Errorf("chmod %s: %w", hdr.Name, err)
		}
	}
	for k, v := range hdr.PAXRecords {
		key, ok := strings.CutPrefix(k, xattrPAXPrefix)
		if !ok {
			continue
		}
		if err := unix.Lsetxattr(path, key, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s of %s: %w", key, hdr.Name, err)
		}
	}
	if hdr.Typeflag == tar.TypeDir {
		return nil
	}
	return snapshotSetTimes(path, hdr)
}

func snapshotSetTimes(path string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", hdr.Name, err)
	}
	return nil
}
