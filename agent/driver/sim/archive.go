package sim

// Simulated filesystems (driver.Archiver), so that `docker cp` can be
// tested without root or runc. Each instance has an in-memory tree that
// starts with a few directories (/, /bin, /etc, /root, /tmp, /usr, /var)
// and holds what is copied in; symlinks are stored but never followed.

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Archiver = (*Driver)(nil)

// simFile is one entry of a simulated filesystem.
type simFile struct {
	mode  os.FileMode
	data  []byte
	link  string
	mtime time.Time
}

// simFS is an instance's tree, keyed by clean absolute path.
type simFS struct {
	mu    sync.Mutex
	files map[string]*simFile
}

var filesystems sync.Map // *Driver -> *sync.Map (id -> *simFS)

// fs returns id's tree; NotFound for an unknown instance.
func (d *Driver) fs(id string) (*simFS, error) {
	d.mu.Lock()
	_, err := d.get(id)
	d.mu.Unlock()
	v, _ := filesystems.LoadOrStore(d, &sync.Map{})
	all := v.(*sync.Map)
	if err != nil {
		all.Delete(id)
		return nil, err
	}
	now := d.cfg.Now()
	fresh := &simFS{files: map[string]*simFile{}}
	for _, p := range []string{"/", "/bin", "/etc", "/root", "/tmp", "/usr", "/var"} {
		fresh.files[p] = &simFile{mode: os.ModeDir | 0o755, mtime: now}
	}
	fresh.files["/tmp"].mode |= os.ModeSticky | 0o777
	got, _ := all.LoadOrStore(id, fresh)
	return got.(*simFS), nil
}

func cleanPath(p string) string { return path.Clean("/" + p) }

// StatPath implements driver.Archiver.
func (d *Driver) StatPath(ctx context.Context, id, p string) (driver.PathStat, error) {
	fs, err := d.fs(id)
	if err != nil {
		return driver.PathStat{}, err
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	c := cleanPath(p)
	f := fs.files[c]
	if f == nil {
		return driver.PathStat{}, errdefs.NotFoundf("no such file or directory: %s", p)
	}
	return driver.PathStat{Name: path.Base(c), Size: int64(len(f.data)), Mode: f.mode, Mtime: f.mtime, LinkTarget: f.link}, nil
}

// ArchivePath implements driver.Archiver.
func (d *Driver) ArchivePath(ctx context.Context, id, p string, w io.Writer) error {
	fs, err := d.fs(id)
	if err != nil {
		return err
	}
	c := cleanPath(p)
	base := path.Base(c)
	if strings.HasSuffix(p, "/.") || c == "/" {
		base = "."
	}
	fs.mu.Lock()
	if fs.files[c] == nil {
		fs.mu.Unlock()
		return errdefs.NotFoundf("no such file or directory: %s", p)
	}
	var names []string
	for name := range fs.files {
		if name == c || c == "/" || strings.HasPrefix(name, c+"/") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	type entry struct {
		hdr  *tar.Header
		data []byte
	}
	var entries []entry
	for _, name := range names {
		f := fs.files[name]
		rel := base
		if name != c {
			rel = path.Join(base, strings.TrimPrefix(strings.TrimPrefix(name, c), "/"))
		}
		h := &tar.Header{Name: rel, Mode: int64(f.mode.Perm()), ModTime: f.mtime, Format: tar.FormatPAX}
		switch {
		case f.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, rel+"/"
		case f.mode&os.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		entries = append(entries, entry{h, f.data})
	}
	fs.mu.Unlock()
	tw := tar.NewWriter(w)
	for _, e := range entries {
		if err := tw.WriteHeader(e.hdr); err != nil {
			return errdefs.Wrap(errdefs.Unavailable, err, "write archive")
		}
		if _, err := tw.Write(e.data); err != nil {
			return errdefs.Wrap(errdefs.Unavailable, err, "write archive")
		}
	}
	if err := tw.Close(); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "write archive")
	}
	return nil
}

// ExtractArchive implements driver.Archiver. The whole archive is read
// before anything changes, so a refused archive leaves the tree as it was.
func (d *Driver) ExtractArchive(ctx context.Context, id, dir string, r io.Reader, opts driver.ArchiveOptions) error {
	fs, err := d.fs(id)
	if err != nil {
		return err
	}
	root := cleanPath(dir)
	fs.mu.Lock()
	t := fs.files[root]
	fs.mu.Unlock()
	if t == nil {
		return errdefs.NotFoundf("no such file or directory: %s", dir)
	}
	if !t.mode.IsDir() {
		return errdefs.InvalidArgument("extraction point is not a directory: %s", dir)
	}
	now := d.cfg.Now()
	type entry struct {
		name string
		f    *simFile
	}
	var entries []entry
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "read archive")
		}
		for _, part := range strings.Split(hdr.Name, "/") {
			if part == ".." {
				return errdefs.InvalidArgument("archive entry %q climbs out of the extraction point with ..", hdr.Name)
			}
		}
		name := path.Join(root, cleanPath(hdr.Name))
		f := &simFile{mode: os.FileMode(hdr.Mode).Perm(), mtime: hdr.ModTime}
		if f.mtime.IsZero() {
			f.mtime = now
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			f.mode |= os.ModeDir
		case tar.TypeSymlink:
			f.mode, f.link = os.ModeSymlink|0o777, hdr.Linkname
		case tar.TypeReg, tar.TypeRegA:
			b, err := io.ReadAll(tr)
			if err != nil {
				return errdefs.Wrap(errdefs.Invalid, err, "read archive entry %q", hdr.Name)
			}
			f.data = b
		case tar.TypeLink:
			if strings.Contains("/"+hdr.Linkname+"/", "/../") {
				return errdefs.InvalidArgument("archive hardlink %q climbs out of the extraction point", hdr.Name)
			}
			target := path.Join(root, cleanPath(hdr.Linkname))
			var src *simFile
			for _, e := range slices.Backward(entries) {
				if e.name == target {
					src = e.f
					break
				}
			}
			if src == nil {
				fs.mu.Lock()
				src = fs.files[target]
				fs.mu.Unlock()
			}
			if src == nil || src.mode.IsDir() {
				return errdefs.InvalidArgument("archive hardlink %q -> %q: no such file", hdr.Name, hdr.Linkname)
			}
			f.mode, f.data = src.mode, bytes.Clone(src.data)
		default:
			continue
		}
		entries = append(entries, entry{name, f})
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if opts.NoOverwriteDirNonDir {
		for _, e := range entries {
			old := fs.files[e.name]
			switch {
			case old == nil:
			case old.mode.IsDir() && !e.f.mode.IsDir():
				return errdefs.InvalidArgument("cannot overwrite directory %q with non-directory %q", e.name, e.name)
			case !old.mode.IsDir() && e.f.mode.IsDir():
				return errdefs.InvalidArgument("cannot overwrite non-directory %q with directory %q", e.name, e.name)
			}
		}
	}
	for _, e := range entries {
		for p := path.Dir(e.name); fs.files[p] == nil; p = path.Dir(p) {
			fs.files[p] = &simFile{mode: os.ModeDir | 0o755, mtime: now}
		}
		if old := fs.files[e.name]; old != nil && old.mode.IsDir() && !e.f.mode.IsDir() {
			for name := range fs.files {
				if strings.HasPrefix(name, e.name+"/") {
					delete(fs.files, name)
				}
			}
		}
		if e.name == "/" {
			continue
		}
		fs.files[e.name] = e.f
	}
	return nil
}
