package driver

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSocketPath(t *testing.T) {
	SocketDir = t.TempDir()
	short := t.TempDir()
	if got := SocketPath(short, "attach.sock"); got != filepath.Join(short, "attach.sock") {
		t.Errorf("a short path moved: %s", got)
	}
	deep := filepath.Join(short, strings.Repeat("d", 60), "nodes", "node-1", "runc", "containers", "0b6c1f4e-5f43-4c55-9d8a-3b1c2d3e4f50")
	a, b := SocketPath(deep, "attach.sock"), SocketPath(deep, "console.sock")
	if a == b || !strings.HasPrefix(a, SocketDir) || len(a) > maxSocketPath || a != SocketPath(deep, "attach.sock") {
		t.Fatalf("sockets of a deep directory: %s %s", a, b)
	}
	if SocketPath(deep+"x", "attach.sock") == a {
		t.Error("two directories share a socket")
	}
	// The long path itself cannot be listened on; the one given can.
	if ln, err := net.Listen("unix", filepath.Join(deep, "attach.sock")); err == nil {
		ln.Close()
		t.Log("this system takes socket paths of any length")
	}
	ln, err := net.Listen("unix", a)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	// Where SocketDir cannot be made, the temporary directory serves.
	SocketDir = "/proc/no-such-dir/sockets"
	if got := SocketPath(deep, "attach.sock"); filepath.Dir(got) != filepath.Join(os.TempDir(), "flotilla-sockets") {
		t.Errorf("without SocketDir: %s", got)
	}
}
