package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"flotilla/api/errdefs"

	"flotilla/internal/testenv"
)

func digestOf(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func TestDirStore(t *testing.T) {
	ctx := context.Background()
	s, err := NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("hello blob")
	d := digestOf(blob)
	if _, err := s.Get(ctx, d); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("Get before Put: %v, want not found", err)
	}
	if err := s.Put(ctx, d, bytes.NewReader([]byte("other content"))); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("Put with wrong content: %v, want invalid", err)
	}
	if _, err := s.Stat(ctx, d); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("a blob that failed verification was stored: %v", err)
	}
	if err := s.Put(ctx, d, bytes.NewReader(blob)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := s.Put(ctx, d, bytes.NewReader(blob)); err != nil {
		t.Fatalf("Put again: %v", err)
	}
	if n, err := s.Stat(ctx, d); err != nil || n != int64(len(blob)) {
		t.Errorf("Stat = %d, %v", n, err)
	}
	rc, err := s.Get(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	got.ReadFrom(rc)
	rc.Close()
	if got.String() != string(blob) {
		t.Errorf("Get = %q", got.String())
	}
	if _, err := s.Get(ctx, v1.Hash{Algorithm: "sha256", Hex: "../../etc/passwd"}); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("Get with a path as digest: %v, want invalid", err)
	}
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, d); err != nil {
		t.Errorf("Delete of a missing blob: %v", err)
	}
	tmp, _ := os.ReadDir(filepath.Join(s.root, "tmp"))
	if len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

// tb builds a layer tar from entries.
type tb struct {
	buf bytes.Buffer
	tw  *tar.Writer
}

func newTB() *tb { t := &tb{}; t.tw = tar.NewWriter(&t.buf); return t }
func (b *tb) dir(n string) *tb {
	b.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: 0o755})
	return b
}
func (b *tb) file(n, data string) *tb {
	b.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(data))})
	b.tw.Write([]byte(data))
	return b
}
func (b *tb) symlink(n, target string) *tb {
	b.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: target, Mode: 0o777})
	return b
}
func (b *tb) hardlink(n, target string) *tb {
	b.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: n, Linkname: target})
	return b
}
func (b *tb) bytes() []byte { b.tw.Close(); return b.buf.Bytes() }

// sandbox is a directory holding rootfs/ and a sentinel outside it; escape
// reports anything that appeared or changed outside rootfs.
type sandbox struct{ dir, rootfs string }

func newSandbox(t testing.TB) sandbox {
	d := t.TempDir()
	s := sandbox{dir: d, rootfs: filepath.Join(d, "rootfs")}
	os.Mkdir(s.rootfs, 0o755)
	os.WriteFile(filepath.Join(d, "sentinel"), []byte("untouched"), 0o644)
	return s
}

func (s sandbox) escape() string {
	ents, _ := os.ReadDir(s.dir)
	var bad []string
	for _, e := range ents {
		if e.Name() != "rootfs" && e.Name() != "sentinel" {
			bad = append(bad, e.Name())
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.dir, "sentinel")); err != nil || string(b) != "untouched" {
		bad = append(bad, "sentinel modified")
	}
	return strings.Join(bad, ",")
}

func readIn(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func TestUnpackAdversarial(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		layers  [][]byte
		wantErr bool
		check   func(t *testing.T, root string)
	}{
		{name: "ErrDotDotPath", layers: [][]byte{newTB().file("../sentinel", "pwned").bytes()}, wantErr: true},
		{name: "ErrDotDotInside", layers: [][]byte{newTB().file("a/../../sentinel", "pwned").bytes()}, wantErr: true},
		{name: "ErrWhiteoutDotDot", layers: [][]byte{newTB().file("../.wh.sentinel", "").bytes()}, wantErr: true},
		{name: "ErrHardlinkOutside", layers: [][]byte{newTB().hardlink("x", "../sentinel").bytes()}, wantErr: true},
		{name: "AbsolutePathStaysInside", layers: [][]byte{newTB().file("/etc/x", "in").bytes()},
			check: func(t *testing.T, root string) {
				if got := readIn(t, root, "etc/x"); got != "in" {
					t.Errorf("etc/x = %q", got)
				}
			}},
		{name: "AbsoluteSymlinkThenWriteThrough", layers: [][]byte{
			newTB().symlink("evil", "/").symlink("up", "../..").bytes(),
			newTB().file("evil/sentinel", "pwned").file("up/sentinel2", "pwned").bytes()},
			check: func(t *testing.T, root string) {
				if got := readIn(t, root, "sentinel"); got != "pwned" {
					t.Errorf("write through the symlink should land inside rootfs, got %q", got)
				}
				if fi, err := os.Lstat(filepath.Join(root, "evil")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("evil should still be a symlink")
				}
			}},
		{name: "ErrDanglingSymlinkDir", layers: [][]byte{
			newTB().symlink("etc", "/../../../tmp-outside").dir("etc/sub/").file("etc/sub/f", "x").bytes()},
			wantErr: true},
		{name: "SymlinkDirThenWriteThrough", layers: [][]byte{
			newTB().dir("real/").symlink("etc", "/../../real").dir("etc/sub/").file("etc/sub/f", "x").bytes()},
			check: func(t *testing.T, root string) {
				if got := readIn(t, root, "real/sub/f"); got != "x" {
					t.Errorf("write through dir symlink = %q, want it in rootfs/real", got)
				}
			}},
		{name: "FileReplacesSymlinkToOutside", layers: [][]byte{
			newTB().symlink("f", "/../sentinel").bytes(), newTB().file("f", "new").bytes()},
			check: func(t *testing.T, root string) {
				if fi, err := os.Lstat(filepath.Join(root, "f")); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("f should now be a regular file")
				}
			}},
		{name: "HardlinkThroughAbsoluteSymlink", layers: [][]byte{
			newTB().file("etc/passwd", "root").symlink("lnk", "/etc").hardlink("p", "lnk/passwd").bytes()},
			check: func(t *testing.T, root string) {
				if got := readIn(t, root, "p"); got != "root" {
					t.Errorf("p = %q, want the rootfs's etc/passwd", got)
				}
			}},
		{name: "HardlinkBeforeTarget", layers: [][]byte{
			newTB().hardlink("a/link", "b/target").file("b/target", "data").bytes()},
			check: func(t *testing.T, root string) {
				if got := readIn(t, root, "a/link"); got != "data" {
					t.Errorf("a/link = %q", got)
				}
			}},
		{name: "WhiteoutAndOpaque", layers: [][]byte{
			newTB().file("etc/secret", "s").file("etc/keep", "k").file("opt/old/a", "a").file("opt/old/sub/z", "z").bytes(),
			newTB().file("etc/.wh.secret", "").file("opt/old/b", "b").file("opt/old/.wh..wh..opq", "").file("opt/old/sub/y", "y").bytes()},
			check: func(t *testing.T, root string) {
				if _, err := os.Lstat(filepath.Join(root, "etc/secret")); !os.IsNotExist(err) {
					t.Errorf("etc/secret survived its whiteout")
				}
				if readIn(t, root, "etc/keep") != "k" {
					t.Errorf("etc/keep lost")
				}
				for p, want := range map[string]bool{"opt/old/a": false, "opt/old/b": true, "opt/old/sub/z": false, "opt/old/sub/y": true} {
					_, err := os.Lstat(filepath.Join(root, p))
					if (err == nil) != want {
						t.Errorf("%s exists=%v, want %v", p, err == nil, want)
					}
				}
			}},
		{name: "WhiteoutOfDirectory", layers: [][]byte{
			newTB().file("d/x/y", "1").bytes(), newTB().file(".wh.d", "").bytes()},
			check: func(t *testing.T, root string) {
				if _, err := os.Lstat(filepath.Join(root, "d")); !os.IsNotExist(err) {
					t.Errorf("d survived")
				}
			}},
		{name: "WhiteoutThroughSymlink", layers: [][]byte{
			newTB().symlink("s", "/../..").bytes(), newTB().file("s/.wh.sentinel", "").bytes()},
			check: func(t *testing.T, root string) {}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sb := newSandbox(t)
			var err error
			for _, l := range c.layers {
				if err = Unpack(ctx, bytes.NewReader(l), sb.rootfs, UnpackOptions{}); err != nil {
					break
				}
			}
			if c.wantErr {
				if errdefs.CodeOf(err) != errdefs.Invalid {
					t.Errorf("got %v, want an invalid error", err)
				}
			} else if err != nil {
				t.Fatalf("Unpack: %v", err)
			}
			if e := sb.escape(); e != "" {
				t.Fatalf("layer escaped the rootfs: %s", e)
			}
			if c.check != nil {
				c.check(t, sb.rootfs)
			}
		})
	}
}

func TestUnpackOverlayFormat(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: whiteout device nodes and trusted xattrs need root")
	}
	d := t.TempDir()
	l := newTB().file("etc/.wh.secret", "").dir("opt/").file("opt/.wh..wh..opq", "").bytes()
	if err := Unpack(context.Background(), bytes.NewReader(l), d, UnpackOptions{Overlay: true}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(d, "etc/secret"))
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("whiteout is not a char device: %v %v", fi, err)
	}
	buf := make([]byte, 8)
	n, err := unixGetxattr(filepath.Join(d, "opt"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque xattr = %q, %v", buf[:n], err)
	}
}

func TestBusyboxImageAndLoaders(t *testing.T) {
	const bb = "/bin/busybox"
	testenv.NeedFile(t, bb, "busybox-static")
	img, err := BusyboxImage(bb)
	if err != nil {
		t.Fatal(err)
	}
	img2, _ := BusyboxImage(bb)
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("digest not reproducible: %s vs %s", d1, d2)
	}
	cf, _ := img.ConfigFile()
	if strings.Join(cf.Config.Cmd, " ") != strings.Join(BusyboxCmd, " ") {
		t.Errorf("cmd = %v", cf.Config.Cmd)
	}
	if _, err := BusyboxImage("/nonexistent/busybox"); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("missing busybox: %v", err)
	}

	dir := t.TempDir()
	check := func(name string, img v1.Image) {
		t.Helper()
		if d, _ := img.Digest(); d != d1 {
			t.Errorf("%s: digest %s, want %s", name, d, d1)
		}
		root := filepath.Join(dir, name+"-rootfs")
		if err := UnpackImage(context.Background(), img, root); err != nil {
			t.Fatalf("%s: UnpackImage: %v", name, err)
		}
		if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "/bin/busybox" {
			t.Errorf("%s: bin/sh -> %q, %v", name, l, err)
		}
		if !strings.HasPrefix(readIn(t, root, "etc/passwd"), "root:x:0:0") {
			t.Errorf("%s: bad etc/passwd", name)
		}
	}

	tag, _ := name.NewTag("flotilla/busybox:1")
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadDockerArchive(tarPath, "flotilla/busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	// A docker-save archive stores the same config and layers; the
	// manifest is rebuilt, so compare the config digest.
	if c1, _ := img.ConfigName(); true {
		if c2, _ := loaded.ConfigName(); c1 != c2 {
			t.Errorf("docker archive config %s, want %s", c2, c1)
		}
	}
	if _, err := LoadDockerArchive(tarPath, "flotilla/other:1"); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("missing tag: %v", err)
	}

	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: "busybox:1"})); err != nil {
		t.Fatal(err)
	}
	fromLayout, err := LoadOCILayout(filepath.Join(dir, "layout"), "busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	check("layout", fromLayout)
	if _, err := LoadOCILayout(filepath.Join(dir, "layout"), "nope"); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("missing ref: %v", err)
	}
	check("built", img)
}

// FuzzUnpack feeds arbitrary tars to Unpack: whatever happens, nothing may
// appear or change outside the rootfs, and nothing may panic.
func FuzzUnpack(f *testing.F) {
	f.Add(newTB().file("a", "x").bytes())
	f.Add(newTB().symlink("evil", "/").file("evil/sentinel", "pwned").bytes())
	f.Add(newTB().symlink("up", "../..").dir("up/x/").file("up/x/f", "1").bytes())
	f.Add(newTB().hardlink("h", "../sentinel").bytes())
	f.Add(newTB().hardlink("h", "later").file("later", "z").bytes())
	f.Add(newTB().file("d/f", "1").file("d/.wh..wh..opq", "").file(".wh.d", "").bytes())
	f.Add(newTB().symlink("s", "/..").file("s/.wh.sentinel", "").bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		sb := newSandbox(t)
		_ = Unpack(context.Background(), bytes.NewReader(data), sb.rootfs, UnpackOptions{})
		if e := sb.escape(); e != "" {
			t.Fatalf("escaped the rootfs: %s", e)
		}
	})
}
