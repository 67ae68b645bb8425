package dockerapi

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"
)

type ctxEntry struct {
	name     string
	typ      byte
	mode     int64
	data     string
	linkname string
}

// contextTar makes a build context tar of entries.
func contextTar(t *testing.T, entries []ctxEntry, gz bool) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.linkname, ModTime: time.Unix(1700000000, 0), Uid: 501}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		must(t, tw.WriteHeader(h))
		if e.typ == tar.TypeReg {
			_, err := tw.Write([]byte(e.data))
			must(t, err)
		}
	}
	must(t, tw.Close())
	if zw != nil {
		must(t, zw.Close())
	}
	return &buf
}

var testContext = []ctxEntry{
	{name: "Dockerfile", typ: tar.TypeReg, mode: 0o644, data: "FROM x\n"},
	{name: "app/", typ: tar.TypeDir, mode: 0o750},
	{name: "app/main.sh", typ: tar.TypeReg, mode: 0o755, data: "#!/bin/sh\n"},
	{name: "app/lib/", typ: tar.TypeDir, mode: 0o755},
	{name: "app/lib/a.txt", typ: tar.TypeReg, mode: 0o600, data: "a"},
	{name: "app/lib/link", typ: tar.TypeSymlink, linkname: "a.txt"},
	{name: "app/lib/hard", typ: tar.TypeLink, linkname: "app/lib/a.txt"},
	{name: "one.txt", typ: tar.TypeReg, mode: 0o644, data: "one"},
	{name: "two.txt", typ: tar.TypeReg, mode: 0o644, data: "two"},
	{name: "data.tar.gz", typ: tar.TypeReg, mode: 0o644, data: "\x1f\x8b\x08rest"},
	{name: "pkg.tar.gz", typ: tar.TypeReg, mode: 0o644, data: archiveData()},
	{name: "plain.gz", typ: tar.TypeReg, mode: 0o644, data: gzipData("just text\n")},
	{name: "x.tar.xz", typ: tar.TypeReg, mode: 0o644, data: "\xfd7zXZ\x00rest"},
}

func gzipData(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.String()
}

// archiveData is a gzip'd tar to ADD: a directory, a file of uid 33, a
// symlink, a hard link, and what must be left out (a name leaving the
// archive, a whiteout, a device).
func archiveData() string {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mt := time.Unix(1600000000, 0)
	for _, h := range []*tar.Header{
		{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o700, ModTime: mt},
		{Name: "top/f.txt", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 33, Gid: 34, Size: 2, ModTime: mt},
		{Name: "top/link", Typeflag: tar.TypeSymlink, Linkname: "f.txt", ModTime: mt},
		{Name: "top/hard", Typeflag: tar.TypeLink, Linkname: "top/f.txt", ModTime: mt},
		{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2, ModTime: mt},
		{Name: "top/.wh.gone", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt},
		{Name: "top/dev", Typeflag: tar.TypeChar, Mode: 0o644, Devmajor: 1, Devminor: 3, ModTime: mt},
	} {
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte("f\n"))
		}
	}
	tw.Close()
	return gzipData(b.String())
}

// layerOf runs a COPY or ADD of the test context and lists its layer as
// "name type mode uid:gid [data|->link]" lines.
func layerOf(t *testing.T, o copyOptions) ([]string, error) {
	t.Helper()
	bc, err := spoolContext(contextTar(t, testContext, false))
	must(t, err)
	defer bc.close()
	p, err := bc.plan(o)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := bc.writeLayer(o, p, &buf); err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(&buf)
	must(t, err)
	tr := tar.NewReader(zr)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		line := fmt.Sprintf("%s %c %o %d:%d", h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid)
		switch h.Typeflag {
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			line += " " + string(b)
		case tar.TypeSymlink, tar.TypeLink:
			line += " ->" + h.Linkname
		}
		out = append(out, line)
	}
	sort.Strings(out)
	return out, nil
}

func TestCopyLayer(t *testing.T) {
	mode := int64(0o640)
	for _, tc := range []struct {
		name string
		o    copyOptions
		want []string
	}{
		{"DirContents", copyOptions{cmd: "COPY", sources: []string{"app"}, dest: "/srv/"}, []string{
			"srv/ 5 755 0:0", "srv/lib/ 5 755 0:0", "srv/lib/a.txt 0 600 0:0 a", "srv/lib/hard 1 0 0:0 ->srv/lib/a.txt",
			"srv/lib/link 2 0 0:0 ->a.txt", "srv/main.sh 0 755 0:0 #!/bin/sh\n"}},
		{"FileIntoDir", copyOptions{cmd: "COPY", sources: []string{"/one.txt"}, dest: "/a/b/"}, []string{
			"a/ 5 755 0:0", "a/b/ 5 755 0:0", "a/b/one.txt 0 644 0:0 one"}},
		{"FileRenamed", copyOptions{cmd: "COPY", sources: []string{"./one.txt"}, dest: "/etc/renamed"}, []string{
			"etc/ 5 755 0:0", "etc/renamed 0 644 0:0 one"}},
		{"Glob", copyOptions{cmd: "COPY", sources: []string{"*.txt"}, dest: "/t/", uid: 10, gid: 20, chmod: &mode}, []string{
			"t/ 5 640 10:20", "t/one.txt 0 640 10:20 one", "t/two.txt 0 640 10:20 two"}},
		{"WholeContext", copyOptions{cmd: "COPY", sources: []string{"."}, dest: "/"}, nil},
		{"AddPlainFile", copyOptions{cmd: "ADD", sources: []string{"two.txt"}, dest: "/x"}, []string{"x 0 644 0:0 two"}},
		{"AddArchive", copyOptions{cmd: "ADD", sources: []string{"pkg.tar.gz"}, dest: "/opt/pkg"}, []string{
			"opt/ 5 755 0:0", "opt/pkg/ 5 755 0:0", "opt/pkg/top/ 5 700 0:0", "opt/pkg/top/f.txt 0 600 33:34 f\n",
			"opt/pkg/top/hard 1 0 0:0 ->opt/pkg/top/f.txt", "opt/pkg/top/link 2 0 0:0 ->f.txt"}},
		{"AddArchiveChown", copyOptions{cmd: "ADD", sources: []string{"pkg.tar.gz"}, dest: "/", uid: 5, gid: 6, chown: true}, []string{
			"top/ 5 700 5:6", "top/f.txt 0 600 5:6 f\n", "top/hard 1 0 5:6 ->top/f.txt", "top/link 2 0 5:6 ->f.txt"}},
		{"AddGzipNotTar", copyOptions{cmd: "ADD", sources: []string{"plain.gz"}, dest: "/d/"}, []string{
			"d/ 5 755 0:0", "d/plain.gz 0 644 0:0 " + gzipData("just text\n")}},
		{"CopyArchiveAsIs", copyOptions{cmd: "COPY", sources: []string{"pkg.tar.gz"}, dest: "/p.tgz"}, []string{
			"p.tgz 0 644 0:0 " + archiveData()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := layerOf(t, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if len(got) != len(testContext) {
					t.Errorf("COPY . / made %d entries, want %d: %q", len(got), len(testContext), got)
				}
				return
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("layer:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestCopyLayerErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    copyOptions
		msg  string
	}{
		{"ErrOutside", copyOptions{cmd: "COPY", sources: []string{"../etc/passwd"}, dest: "/x"}, "forbidden path outside the build context"},
		{"ErrOutsideDeep", copyOptions{cmd: "COPY", sources: []string{"app/../../x"}, dest: "/x"}, "forbidden path outside the build context"},
		{"ErrMissing", copyOptions{cmd: "COPY", sources: []string{"nope"}, dest: "/x"}, "file not found in build context"},
		{"ErrNoMatch", copyOptions{cmd: "COPY", sources: []string{"*.none"}, dest: "/x/"}, "no source files were specified"},
		{"ErrManyToFile", copyOptions{cmd: "COPY", sources: []string{"one.txt", "two.txt"}, dest: "/x"}, "must be a directory and end with a /"},
		{"ErrURLCopy", copyOptions{cmd: "COPY", sources: []string{"http://h/x"}, dest: "/x"}, "source can't be a URL"},
		{"ErrURLAdd", copyOptions{cmd: "ADD", sources: []string{"https://h/x"}, dest: "/x"}, "adding from a URL"},
		{"ErrAddBadGzip", copyOptions{cmd: "ADD", sources: []string{"data.tar.gz"}, dest: "/x/"}, "looks gzip'd but is not"},
		{"ErrAddXz", copyOptions{cmd: "ADD", sources: []string{"x.tar.xz"}, dest: "/x/"}, "xz archive"},
		{"ErrHardLinkAlone", copyOptions{cmd: "COPY", sources: []string{"app/lib/hard"}, dest: "/x"}, "is a hard link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := layerOf(t, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v, want one containing %q", err, tc.msg)
			}
		})
	}
}

func TestBuildContextFiles(t *testing.T) {
	bc, err := spoolContext(contextTar(t, testContext, true))
	must(t, err)
	defer bc.close()
	df, err := bc.dockerfile("./Dockerfile")
	if err != nil || string(df) != "FROM x\n" {
		t.Errorf("Dockerfile from a gzip'd context: %q %v", df, err)
	}
	for _, bad := range []string{"nope", "app", "../Dockerfile"} {
		if _, err := bc.dockerfile(bad); err == nil {
			t.Errorf("dockerfile(%q) succeeded", bad)
		}
	}
	if _, err := spoolContext(strings.NewReader("not a tar at all, not at all, not at all")); err == nil {
		t.Errorf("a context that is not a tar was accepted")
	}
	for _, c := range []struct {
		o, c string
		ok   bool
	}{{"a/../b", "b", true}, {"/x/y", "x/y", true}, {"../x", "", false}, {"./", ".", true}} {
		if got, ok := cleanName(c.o); got != c.c || ok != c.ok {
			t.Errorf("cleanName(%q) = %q %v", c.o, got, ok)
		}
	}
	files := map[string]string{"passwd": "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n", "group": "root:x:0:\nstaff:x:50:app\n"}
	lookup := func(f string) ([]byte, error) { return []byte(files[f]), nil }
	for _, c := range []struct {
		v        string
		uid, gid int
	}{{"10:20", 10, 20}, {"7", 7, 7}, {"app", 1000, 1000}, {"app:staff", 1000, 50}, {"0:staff", 0, 50}} {
		if u, g, err := parseChown(c.v, lookup); u != c.uid || g != c.gid || err != nil {
			t.Errorf("parseChown(%s) = %d %d %v", c.v, u, g, err)
		}
	}
	for _, bad := range []string{"nobody", "app:nogroup", ":1", "1:", "-1"} {
		if _, _, err := parseChown(bad, lookup); err == nil {
			t.Errorf("parseChown(%s) succeeded", bad)
		}
	}
	if _, _, err := parseChown("app", nil); err == nil || !strings.Contains(err.Error(), "not a number") {
		t.Errorf("parseChown of a name without an image: %v", err)
	}
}
