package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pkg/sftp"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
)

// sharingDriver keeps each volume in a directory of its own under root.
type sharingDriver struct {
	driver.Driver
	root string
}

func (d sharingDriver) VolumeDir(ctx context.Context, id string, sizeMiB int64) (string, error) {
	dir := filepath.Join(d.root, id, "_data")
	return dir, os.MkdirAll(dir, 0o755)
}

const shareVol = "0b6c1f4e-5f43-4c55-9d8a-3b1c2d3e4f50"

// dialShare opens an SFTP client on volume id's share through the same
// pipe sshfs uses, with env's values over the defaults.
func dialShare(t *testing.T, addr, id, token string) (*sftp.Client, error) {
	t.Helper()
	env := map[string]string{driver.EnvShareAddress: addr, driver.EnvShareVolume: id, driver.EnvShareToken: token}
	toServer, fromClient := io.Pipe()
	fromServer, toClient := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := PipeVolumeShare(ctx, func(k string) string { return env[k] }, toServer, toClient)
		toClient.CloseWithError(errors.Join(err, io.EOF))
		toServer.CloseWithError(errors.Join(err, io.EOF))
		done <- err
	}()
	c, err := sftp.NewClientPipe(fromServer, fromClient)
	if err != nil {
		cancel()
		fromClient.Close()
		return nil, errors.Join(err, <-done)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
	})
	return c, nil
}

func TestVolumeShare(t *testing.T) {
	root := t.TempDir()
	ss := NewStreamServer(sharingDriver{MustSim(t, sim.Config{}), root}, testToken, nil)
	srv := httptest.NewServer(ss)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	// A file next to the volume's directory, which no request may reach.
	if err := os.MkdirAll(filepath.Join(root, shareVol), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, shareVol, "secret"), []byte("node"), 0o600); err != nil {
		t.Fatal(err)
	}

	c, err := dialShare(t, addr, shareVol, wire.VolumeShareToken(testToken, shareVol))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("Files", func(t *testing.T) {
		f, err := c.OpenFile("/hello", os.O_RDWR|os.O_CREATE|os.O_EXCL)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Chmod(0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte("hello from another node\n")); err != nil {
			t.Fatal(err)
		}
		f.Close()
		b, err := os.ReadFile(filepath.Join(root, shareVol, "_data", "hello"))
		if err != nil || string(b) != "hello from another node\n" {
			t.Fatalf("the volume's file holds %q, %v", b, err)
		}
		if err := c.MkdirAll("/a/b"); err != nil {
			t.Fatal(err)
		}
		if err := c.PosixRename("/hello", "/a/b/moved"); err != nil {
			t.Fatal(err)
		}
		if err := c.Symlink("b/moved", "/a/link"); err != nil {
			t.Fatal(err)
		}
		if target, err := c.ReadLink("/a/link"); err != nil || target != "b/moved" {
			t.Fatalf("readlink: %q %v", target, err)
		}
		if got, err := os.Readlink(filepath.Join(root, shareVol, "_data", "a", "link")); err != nil || got != "b/moved" {
			t.Fatalf("the link on the node is %q, %v", got, err)
		}
		r, err := c.Open("/a/link")
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(r)
		r.Close()
		if string(b) != "hello from another node\n" {
			t.Fatalf("read through the link: %q", b)
		}
		if err := c.Truncate("/a/b/moved", 5); err != nil {
			t.Fatal(err)
		}
		if err := c.Chmod("/a/b/moved", 0o600); err != nil {
			t.Fatal(err)
		}
		fi, err := c.Stat("/a/b/moved")
		if err != nil || fi.Size() != 5 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("stat after truncate and chmod: %v %v", fi, err)
		}
		ents, err := c.ReadDir("/a")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		if strings.Join(names, ",") != "b,link" {
			t.Fatalf("readdir /a: %v", names)
		}
		vfs, err := c.StatVFS("/")
		if err != nil || vfs.Blocks == 0 {
			t.Fatalf("statvfs: %+v %v", vfs, err)
		}
		if err := c.Remove("/a/b/moved"); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveDirectory("/a/b"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(root, shareVol, "_data", "a", "b")); !os.IsNotExist(err) {
			t.Fatalf("the removed directory is still on the node: %v", err)
		}
	})
	t.Run("ErrEscape", func(t *testing.T) {
		for _, p := range []string{"../secret", "/../secret", "/a/../../secret"} {
			if f, err := c.Open(p); err == nil {
				b, _ := io.ReadAll(f)
				f.Close()
				if string(b) == "node" {
					t.Errorf("read the node's file through %s", p)
				}
			}
		}
		if err := c.Symlink("../secret", "/up"); err != nil {
			t.Fatal(err)
		}
		if err := c.Symlink("/etc/passwd", "/abs"); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/up", "/abs"} {
			if f, err := c.Open(p); err == nil {
				b, _ := io.ReadAll(f)
				f.Close()
				t.Errorf("opened %s, a link out of the volume: %q", p, b)
			}
			if f, err := c.Create(p); err == nil {
				f.Close()
				t.Errorf("wrote through %s, a link out of the volume", p)
			}
		}
		if err := c.Rename("/up", "/../stolen"); err == nil {
			if _, err := os.Lstat(filepath.Join(root, shareVol, "stolen")); err == nil {
				t.Error("renamed a file out of the volume")
			}
		}
		if b, _ := os.ReadFile(filepath.Join(root, shareVol, "secret")); string(b) != "node" {
			t.Errorf("the node's file changed: %q", b)
		}
	})
	t.Run("ErrToken", func(t *testing.T) {
		other := "1b6c1f4e-5f43-4c55-9d8a-3b1c2d3e4f51"
		for name, tok := range map[string]string{
			"stream token":     testToken,
			"another volume's": wire.VolumeShareToken(testToken, other),
			"another node's":   wire.VolumeShareToken("not-"+testToken, shareVol),
			"made up":          strings.Repeat("0", 64),
		} {
			if _, err := dialShare(t, addr, shareVol, tok); err == nil || !strings.Contains(err.Error(), "401") {
				t.Errorf("a share opened with the %s token: %v", name, err)
			}
		}
		if _, err := dialShare(t, addr, other, wire.VolumeShareToken(testToken, shareVol)); err == nil {
			t.Error("volume's token opened another volume")
		}
	})
}

func TestOpenPerm(t *testing.T) {
	// attrs is an open's attributes: the flags word, then the fields
	// (sizes are 8 bytes, the others 4).
	attrs := func(flags uint32, fields ...[]byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, flags)
		for _, f := range fields {
			b = append(b, f...)
		}
		return b
	}
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	for _, c := range []struct {
		attrs []byte
		want  os.FileMode
	}{
		{nil, 0o644},
		{attrs(0), 0o644},
		{attrs(0x4, u32(0o100600)), 0o600},
		{attrs(0x4, u32(0o104755)), 0o755 | os.ModeSetuid},
		{attrs(0x1|0x4, u64(1<<40), u32(0o100640)), 0o640},
		{attrs(0x1|0x2|0x4, u64(1), u32(1000), u32(1000), u32(0o100700)), 0o700},
		{attrs(0x4), 0o644}, // truncated
	} {
		if got := openPerm(c.attrs); got != c.want {
			t.Errorf("openPerm(%x) = %v, want %v", c.attrs, got, c.want)
		}
	}
}
