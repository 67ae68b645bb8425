package runc

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// commitFixture is a container bundle whose overlay upper directory holds
// what a hostile container could leave there: symlinks to the host, a
// device node, a fifo, a name that reads as a whiteout, hard links, a
// whiteout, an opaque directory and a mount point's placeholder.
func commitFixture(t *testing.T) (d *Driver, upper, outside string) {
	t.Helper()
	root := t.TempDir()
	d = &Driver{cfg: Config{Root: root}}
	bundle := filepath.Join(root, "containers", "c1")
	lower := filepath.Join(root, "layers", "l1")
	upper = filepath.Join(bundle, "upper")
	outside = t.TempDir()
	must(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o644))
	for _, dir := range []string{"etc", "opq", "proc", "usr"} {
		must(t, os.MkdirAll(filepath.Join(lower, dir), 0o755))
	}
	for _, f := range []string{"etc/passwd", "etc/group", "etc/hosts", "opq/old1", "usr/keep"} {
		must(t, os.WriteFile(filepath.Join(lower, f), []byte("lower "+f), 0o644))
	}
	for _, dir := range []string{"etc", "opq", "newdir", "usr"} {
		must(t, os.MkdirAll(filepath.Join(upper, dir), 0o755))
	}
	must(t, os.WriteFile(filepath.Join(upper, "etc/passwd"), []byte("changed"), 0o644))
	must(t, os.WriteFile(filepath.Join(upper, "etc/hosts"), nil, 0o644)) // a bind mount's placeholder
	must(t, unix.Mknod(filepath.Join(upper, "etc/group"), unix.S_IFCHR, 0))
	must(t, unix.Setxattr(filepath.Join(upper, "opq"), "trusted.overlay.opaque", []byte("y"), 0))
	must(t, os.WriteFile(filepath.Join(upper, "opq/new"), []byte("new"), 0o644))
	must(t, os.WriteFile(filepath.Join(upper, "newdir/a"), []byte("aaa"), 0o600))
	must(t, os.Link(filepath.Join(upper, "newdir/a"), filepath.Join(upper, "newdir/b")))
	must(t, os.WriteFile(filepath.Join(upper, "newdir/c"), []byte("ccc"), 0o644))
	must(t, os.Symlink(outside, filepath.Join(upper, "evil")))
	must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(upper, "evilfile")))
	must(t, unix.Mknod(filepath.Join(upper, "dev0"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
	must(t, unix.Mkfifo(filepath.Join(upper, "fifo"), 0o644))
	must(t, os.WriteFile(filepath.Join(upper, ".wh.sneaky"), nil, 0o644))
	must(t, os.WriteFile(filepath.Join(bundle, "lowers"), []byte(lower), 0o600))
	must(t, writeJSONAtomic(filepath.Join(bundle, fileConfig), specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc"}, {Destination: "/etc/hosts"}}}))
	must(t, writeJSONAtomic(filepath.Join(bundle, fileSpec), driver.Spec{ID: "c1"}))
	return d, upper, outside
}

func TestChanges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: whiteouts and trusted xattrs need root")
	}
	d, _, _ := commitFixture(t)
	list, err := d.Changes(context.Background(), "c1")
	must(t, err)
	var got []string
	for _, c := range list {
		got = append(got, string("CAD"[c.Kind])+" "+c.Path)
	}
	want := []string{"A /.wh.sneaky", "A /dev0", "C /etc", "D /etc/group", "C /etc/passwd", "A /evil", "A /evilfile", "A /fifo",
		"A /newdir", "A /newdir/a", "A /newdir/b", "A /newdir/c", "C /opq", "A /opq/new", "D /opq/old1"}
	if !slices.Equal(got, want) {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := d.Changes(context.Background(), "nosuch"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("changes of an unknown container: %v, want NotFound", err)
	}
}

// TestExportChanges checks the layer: whiteouts in OCI form, symlinks
// kept as symlinks (never followed to the host), no device node, no name
// that would read as a whiteout, hard links kept, and a file a racing
// container swaps for a symlink to the host left out.
func TestExportChanges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: whiteouts and trusted xattrs need root")
	}
	d, _, outside := commitFixture(t)
	swapped := false
	testHookBeforeOpen = func(dirfd int, name string) {
		if name == "c" && !swapped {
			must(t, unix.Unlinkat(dirfd, name, 0))
			must(t, unix.Symlinkat(filepath.Join(outside, "secret"), dirfd, name))
			swapped = true
		}
	}
	defer func() { testHookBeforeOpen = nil }()
	var buf bytes.Buffer
	must(t, d.ExportChanges(context.Background(), "c1", &buf))
	if !swapped {
		t.Fatal("the swap hook never ran")
	}
	names, files := tarEntries(t, buf.Bytes())
	want := []string{"etc/", "etc/.wh.group", "etc/passwd", "evil -> " + outside, "evilfile -> " + filepath.Join(outside, "secret"),
		"fifo", "newdir/", "newdir/a", "newdir/b -> newdir/a", "opq/", "opq/.wh..wh..opq", "opq/new", "usr/"}
	if !slices.Equal(names, want) {
		t.Fatalf("layer entries:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	for n, c := range files {
		if strings.Contains(c, "host secret") {
			t.Fatalf("the layer carries the host's file as %s", n)
		}
	}
	if files["newdir/a"] != "aaa" || files["etc/passwd"] != "changed" {
		t.Fatalf("layer contents: %q", files)
	}
}
