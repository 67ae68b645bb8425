package dockerapi

// The build context of `docker build` (the tar the CLI sends, .dockerignore
// already applied) and the layers COPY and ADD make from it. Paths are
// context-relative and cleaned; none may leave the context; modes and
// times are kept, owners are root's or --chown's; a file copied over a
// directory's place needs the destination to end in "/", as the classic
// builder cannot see the image's files from here.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"flotilla/api/errdefs"
)

// buildContext is the spooled context tar and an index of its entries.
type buildContext struct {
	path    string
	entries map[string]*tar.Header // by cleaned relative name ("a/b")
	names   []string               // sorted
	from    string                 // the stage or image it is the filesystem of ("": the build context)
}

// spoolContext writes the body (a tar, gzip'd or not) to a temporary file
// and indexes it. The caller removes the file with close.
func spoolContext(body io.Reader) (*buildContext, error) {
	f, err := os.CreateTemp("", "flotilla-build-*.tar")
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "spool the build context")
	}
	bc := &buildContext{path: f.Name(), entries: map[string]*tar.Header{}}
	br := bufio.NewReaderSize(body, 64<<10)
	var src io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			bc.close()
			return nil, errdefs.InvalidArgument("the build context is not a valid gzip'd tar: %v", err)
		}
		src = zr
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		bc.close()
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read the build context: %v", err)
	}
	if err := f.Close(); err != nil {
		bc.close()
		return nil, errdefs.Wrap(errdefs.Internal, err, "spool the build context")
	}
	if err := bc.index(); err != nil {
		bc.close()
		return nil, err
	}
	return bc, nil
}

func (bc *buildContext) close() { os.Remove(bc.path) }

// cleanName is a context-relative name, or false for one outside it.
func cleanName(n string) (string, bool) {
	c := path.Clean(strings.TrimLeft(n, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", false
	}
	return c, true
}

func (bc *buildContext) index() error {
	f, err := os.Open(bc.path)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "read the build context")
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errdefs.InvalidArgument("the build context is not a valid tar: %v", err)
		}
		name, ok := cleanName(h.Name)
		if !ok || name == "." {
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
		default:
			continue // devices, fifos: never copied
		}
		bc.entries[name] = h
		// Directories a name implies, in case the tar lists none.
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := bc.entries[d]; ok {
				break
			}
			bc.entries[d] = &tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: h.ModTime}
		}
	}
	bc.names = make([]string, 0, len(bc.entries))
	for n := range bc.entries {
		bc.names = append(bc.names, n)
	}
	sort.Strings(bc.names)
	return nil
}

// dockerfile reads the named Dockerfile from the context.
func (bc *buildContext) dockerfile(name string) ([]byte, error) {
	n, ok := cleanName(name)
	if !ok {
		return nil, errdefs.InvalidArgument("the Dockerfile %s is outside the build context", name)
	}
	h := bc.entries[n]
	if h == nil || h.Typeflag != tar.TypeReg {
		return nil, errdefs.InvalidArgument("Cannot locate specified Dockerfile: %s", name)
	}
	out, err := bc.readFile(n, 4<<20)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read the Dockerfile %s: %v", name, err)
	}
	return out, nil
}

// readFile returns the first max+1 bytes (at most) of the regular file n
// (a cleaned name); an error when there is no such file.
func (bc *buildContext) readFile(n string, max int64) ([]byte, error) {
	if h := bc.entries[n]; h == nil || h.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%s is not a file", n)
	}
	var out []byte
	err := bc.each(func(name string, h *tar.Header, r io.Reader) error {
		if name == n && h.Typeflag == tar.TypeReg {
			var err error
			out, err = io.ReadAll(io.LimitReader(r, max+1))
			return err
		}
		return nil
	})
	return out, err
}

// each calls fn with every entry of the context tar in order.
func (bc *buildContext) each(fn func(name string, h *tar.Header, r io.Reader) error) error {
	f, err := os.Open(bc.path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := cleanName(h.Name)
		if !ok {
			continue
		}
		if err := fn(name, h, tr); err != nil {
			return err
		}
	}
}

// copyOptions are the parts of a COPY or ADD that decide its layer.
type copyOptions struct {
	cmd     string   // COPY or ADD
	sources []string // as written, variables expanded
	dest    string   // absolute, variables expanded; a trailing "/" means a directory
	uid     int
	gid     int
	chmod   *int64
	chown   bool // --chown given: it also owns what ADD unpacks
	now     time.Time
}

// hasGlob reports whether a source is a pattern.
func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// copyPlan maps context names to the names they get in the layer.
type copyPlan struct {
	targets map[string][]string // context name -> layer names (no leading "/")
	dirs    map[string]*tar.Header
	// addRoots are the directories ADD unpacks each explicitly named
	// file into, should it be an archive.
	addRoots map[string]string
}

// plan resolves the sources of a COPY or ADD against the context.
func (bc *buildContext) plan(o copyOptions) (*copyPlan, error) {
	fail := func(format string, args ...any) error {
		return errdefs.InvalidArgument("%s failed: %s", o.cmd, fmt.Sprintf(format, args...))
	}
	destDir := strings.HasSuffix(o.dest, "/")
	dest := strings.TrimPrefix(path.Clean(o.dest), "/")
	if dest == "" {
		dest, destDir = ".", true
	}
	var matches []string
	for _, src := range o.sources {
		if strings.Contains(src, "://") || strings.HasPrefix(src, "git@") {
			if o.cmd == "COPY" {
				return nil, fail("source can't be a URL for COPY: %s", src)
			}
			return nil, fail("adding from a URL (%s) is not supported by this builder: download the file into the build context and COPY it", src)
		}
		raw := path.Clean(strings.TrimPrefix(src, "/"))
		if raw == ".." || strings.HasPrefix(raw, "../") {
			return nil, fail("forbidden path outside the build context: %s", src)
		}
		if raw == "." {
			matches = append(matches, ".")
			continue
		}
		if hasGlob(raw) {
			n := 0
			for _, name := range bc.names {
				if ok, err := path.Match(raw, name); err != nil {
					return nil, fail("bad pattern %q: %v", src, err)
				} else if ok {
					matches = append(matches, name)
					n++
				}
			}
			continue
		}
		if bc.entries[raw] == nil {
			if bc.from != "" {
				return nil, fail("%s not found in %s (symbolic links in the path are not followed)", src, bc.from)
			}
			return nil, fail("file not found in build context or excluded by .dockerignore: stat %s: file does not exist", src)
		}
		matches = append(matches, raw)
	}
	if len(matches) == 0 {
		return nil, fail("no source files were specified")
	}
	if len(matches) > 1 && !strings.HasSuffix(o.dest, "/") {
		return nil, fail("when using %s with more than one source file, the destination must be a directory and end with a /", o.cmd)
	}
	p := &copyPlan{targets: map[string][]string{}, dirs: map[string]*tar.Header{}, addRoots: map[string]string{}}
	addParents := func(n string) {
		for d := path.Dir(n); d != "."; d = path.Dir(d) {
			if _, ok := p.dirs[d]; ok {
				break
			}
			p.dirs[d] = &tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}
		}
	}
	add := func(src, dst string) {
		if dst == "." {
			return // the root itself is never an entry
		}
		p.targets[src] = append(p.targets[src], dst)
		addParents(dst)
	}
	for _, m := range matches {
		var h *tar.Header
		if m != "." {
			h = bc.entries[m]
		}
		if m == "." || h.Typeflag == tar.TypeDir {
			// A directory's contents go into the destination.
			if dest != "." {
				p.dirs[dest] = &tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}
				addParents(dest)
			}
			prefix := m + "/"
			for _, name := range bc.names {
				if m != "." && !strings.HasPrefix(name, prefix) {
					continue
				}
				rel := name
				if m != "." {
					rel = strings.TrimPrefix(name, prefix)
				}
				add(name, path.Join(dest, rel))
			}
			continue
		}
		if o.cmd == "ADD" && h.Typeflag == tar.TypeReg {
			p.addRoots[m] = dest
		}
		if destDir {
			add(m, path.Join(dest, path.Base(m)))
		} else {
			add(m, dest)
		}
	}
	return p, nil
}

// archiveMagic reports whether data starts like an archive ADD would
// unpack (tar, gzip, bzip2, xz).
func archiveMagic(b []byte) bool {
	switch {
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}), bytes.HasPrefix(b, []byte("BZh")),
		bytes.HasPrefix(b, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return true
	case len(b) >= 262 && string(b[257:262]) == "ustar":
		return true
	}
	return false
}

// maxUnpacked bounds what one archive ADD unpacks may add up to.
const maxUnpacked = 8 << 30

// unpackArchive writes the entries of the archive r (tar, gzip'd or
// bzip2'd tar) under root, with their modes, owners (--chown's when given)
// and times; names never leave root, device nodes and whiteouts are left
// out. When the file is not a tar it returns the file's bytes, spooled,
// for the caller to copy as they are (and close), and unpacked false.
func unpackArchive(tw *tar.Writer, o copyOptions, name, root string, r io.Reader, written map[string]bool) (*os.File, bool, error) {
	f, err := os.CreateTemp("", "flotilla-build-add-*")
	if err != nil {
		return nil, false, errdefs.Wrap(errdefs.Internal, err, "spool %s", name)
	}
	os.Remove(f.Name()) // unlinked: gone when closed
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return nil, false, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, false, err
	}
	br := bufio.NewReader(f)
	head, _ := br.Peek(6)
	var ar io.Reader = br
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, false, errdefs.InvalidArgument("ADD failed: %s looks gzip'd but is not: %v", name, err)
		}
		ar = zr
	case bytes.HasPrefix(head, []byte("BZh")):
		ar = bzip2.NewReader(br)
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return nil, false, errdefs.InvalidArgument("ADD failed: %s is an xz archive, which this builder cannot unpack: use a gzip or bzip2 tar, or COPY it and RUN tar -xJf", name)
	}
	tr := tar.NewReader(ar)
	eh, err := tr.Next()
	if err != nil {
		// Not a tar: the file itself is copied.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, false, err
		}
		ok = true
		return f, false, nil
	}
	if root != "." {
		var parents []string
		for d := root; d != "." && !written[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			written[parents[i]] = true
			if err := tw.WriteHeader(&tar.Header{Name: parents[i] + "/", Typeflag: tar.TypeDir, Mode: 0o755,
				Uid: o.uid, Gid: o.gid, ModTime: o.now, Format: tar.FormatPAX}); err != nil {
				return nil, false, err
			}
		}
	}
	var total int64
	for ; err == nil; eh, err = tr.Next() {
		en, ok := cleanName(eh.Name)
		if !ok || en == "." || strings.HasPrefix(path.Base(en), ".wh.") {
			continue
		}
		nh := &tar.Header{Name: path.Join(root, en), Mode: eh.Mode & 0o7777, Uid: eh.Uid, Gid: eh.Gid,
			ModTime: eh.ModTime, Format: tar.FormatPAX}
		if o.chown {
			nh.Uid, nh.Gid = o.uid, o.gid
		}
		switch eh.Typeflag {
		case tar.TypeReg, '\x00':
			nh.Typeflag, nh.Size = tar.TypeReg, eh.Size
			if total += eh.Size; total > maxUnpacked {
				return nil, false, errdefs.InvalidArgument("ADD failed: %s unpacks to more than %d bytes", name, int64(maxUnpacked))
			}
		case tar.TypeDir:
			nh.Typeflag, nh.Name = tar.TypeDir, nh.Name+"/"
		case tar.TypeSymlink:
			nh.Typeflag, nh.Linkname = tar.TypeSymlink, eh.Linkname
		case tar.TypeLink:
			ln, ok := cleanName(eh.Linkname)
			if !ok {
				continue
			}
			nh.Typeflag, nh.Linkname = tar.TypeLink, path.Join(root, ln)
		default:
			continue // devices, fifos: never unpacked
		}
		if err := tw.WriteHeader(nh); err != nil {
			return nil, false, err
		}
		if nh.Typeflag == tar.TypeReg {
			if _, err := io.CopyN(tw, tr, nh.Size); err != nil {
				return nil, false, errdefs.InvalidArgument("ADD failed: read %s: %v", name, err)
			}
		}
	}
	if err != io.EOF {
		return nil, false, errdefs.InvalidArgument("ADD failed: %s is a damaged archive: %v", name, err)
	}
	return nil, true, nil
}

// writeLayer writes the layer of a COPY or ADD, gzip'd, to w: the
// directories first, then the entries in the context's order.
func (bc *buildContext) writeLayer(o copyOptions, p *copyPlan, w io.Writer) error {
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	mode := func(h *tar.Header) int64 {
		if o.chmod != nil && h.Typeflag != tar.TypeSymlink {
			return *o.chmod
		}
		return h.Mode & 0o7777
	}
	// Every directory the copy makes or fills, sorted so that parents come
	// first; copied directories keep their modes and times.
	dirs := map[string]*tar.Header{}
	for d, h := range p.dirs {
		dirs[d] = h
	}
	for src, dsts := range p.targets {
		if h := bc.entries[src]; h.Typeflag == tar.TypeDir {
			for _, d := range dsts {
				dirs[d] = h
			}
		}
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	written := map[string]bool{}
	for _, d := range names {
		written[d] = true
		h := dirs[d]
		mt := h.ModTime
		if mt.IsZero() {
			mt = o.now
		}
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode(h), Uid: o.uid, Gid: o.gid,
			ModTime: mt, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	// Hard links inside the copy keep pointing at their target's copy.
	linkTarget := func(h *tar.Header) (string, error) {
		t, ok := cleanName(h.Linkname)
		if !ok || len(p.targets[t]) == 0 {
			return "", errdefs.InvalidArgument("%s failed: %s is a hard link to %s, which this %s does not copy: copy both, or make it a regular file",
				o.cmd, h.Name, h.Linkname, o.cmd)
		}
		return p.targets[t][0], nil
	}
	err := bc.each(func(name string, h *tar.Header, r io.Reader) error {
		dsts := p.targets[name]
		if len(dsts) == 0 || h.Typeflag == tar.TypeDir {
			return nil
		}
		var data []byte
		var rd io.Reader = r
		if root, ok := p.addRoots[name]; ok && h.Typeflag == tar.TypeReg {
			head := make([]byte, 512)
			n, _ := io.ReadFull(r, head)
			rd = io.MultiReader(bytes.NewReader(head[:n]), r)
			if archiveMagic(head[:n]) {
				f, unpacked, err := unpackArchive(tw, o, name, root, rd, written)
				if err != nil || unpacked {
					return err
				}
				defer f.Close()
				rd = f // not a tar after all: copied as it is
			}
		}
		if h.Typeflag == tar.TypeReg && len(dsts) > 1 {
			var err error
			if data, err = io.ReadAll(rd); err != nil {
				return err
			}
		}
		for i, d := range dsts {
			nh := &tar.Header{Name: d, Mode: mode(h), Uid: o.uid, Gid: o.gid, ModTime: h.ModTime, Format: tar.FormatPAX}
			switch h.Typeflag {
			case tar.TypeReg:
				nh.Typeflag, nh.Size = tar.TypeReg, h.Size
			case tar.TypeSymlink:
				nh.Typeflag, nh.Linkname = tar.TypeSymlink, h.Linkname
			case tar.TypeLink:
				t, err := linkTarget(h)
				if err != nil {
					return err
				}
				nh.Typeflag, nh.Linkname = tar.TypeLink, t
			}
			if err := tw.WriteHeader(nh); err != nil {
				return err
			}
			if nh.Typeflag != tar.TypeReg {
				continue
			}
			src := rd
			if data != nil {
				src = bytes.NewReader(data)
			} else if i > 0 {
				return fmt.Errorf("internal: %s copied twice without its data", name)
			}
			if _, err := io.CopyN(tw, src, h.Size); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// parseChown reads --chown: USER[:GROUP], each a name or a number. A
// USER alone gives the same number as group. Names are looked up with
// lookup (the image's /etc/passwd or /etc/group content, by file name),
// called only when a name is given.
func parseChown(v string, lookup func(file string) ([]byte, error)) (int, int, error) {
	u, g, hasG := strings.Cut(v, ":")
	if u == "" || hasG && g == "" {
		return 0, 0, fmt.Errorf("--chown=%s: give USER or USER:GROUP (names or numbers)", v)
	}
	uid, err := chownID(u, "passwd", lookup)
	if err != nil {
		return 0, 0, fmt.Errorf("--chown=%s: %v", v, err)
	}
	gid := uid
	if hasG {
		if gid, err = chownID(g, "group", lookup); err != nil {
			return 0, 0, fmt.Errorf("--chown=%s: %v", v, err)
		}
	}
	return uid, gid, nil
}

// chownID is a number, or the id of name in the image's /etc/file.
func chownID(name, file string, lookup func(string) ([]byte, error)) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%d is not an id", n)
		}
		return n, nil
	}
	if lookup == nil {
		return 0, fmt.Errorf("%s is not a number", name)
	}
	data, err := lookup(file)
	if err != nil {
		return 0, fmt.Errorf("cannot look %s up: the image has no readable /etc/%s (%v): use a number", name, file, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			n, err := strconv.Atoi(f[2])
			if err != nil || n < 0 {
				return 0, fmt.Errorf("the image's /etc/%s has a bad id for %s", file, name)
			}
			return n, nil
		}
	}
	kind := "user"
	if file == "group" {
		kind = "group"
	}
	return 0, fmt.Errorf("no %s %s in the image's /etc/%s", kind, name, file)
}
