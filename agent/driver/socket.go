package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
)

// maxSocketPath is the longest path a Unix socket may have here (sun_path
// holds 108 bytes, the last a NUL), with room to spare.
const maxSocketPath = 100

// SocketDir holds the sockets whose own place is too deep for a socket's
// path (see SocketPath); a process that cannot make it (not root) uses
// flotilla-sockets in the temporary directory.
var SocketDir = "/run/flotilla/sockets"

// SocketPath returns where the socket name of directory dir lives: in dir
// when the path fits a socket address, else in SocketDir under a name
// derived from dir (made if needed), so a data directory deep in the file
// tree never breaks a container's console or a VM's monitor. Every side of
// a socket calls it with the same arguments.
func SocketPath(dir, name string) string {
	p := filepath.Join(dir, name)
	if len(p) <= maxSocketPath {
		return p
	}
	sum := sha256.Sum256([]byte(dir))
	base := SocketDir
	if os.MkdirAll(base, 0o700) != nil {
		base = filepath.Join(os.TempDir(), "flotilla-sockets")
		os.MkdirAll(base, 0o700)
	}
	return filepath.Join(base, hex.EncodeToString(sum[:12])+"-"+name)
}
