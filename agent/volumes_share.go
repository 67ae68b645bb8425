package agent

// Volume shares: a volume's storage lives on one node (its home), and an
// instance on another node mounts it over the network. The home node's
// stream server answers POST /streams/v1/volumes/{id}/share with an upgrade
// to SFTP over the volume's directory, authorized by the volume's share
// token (wire.VolumeShareToken), not the stream token; the mounting node
// runs sshfs, whose transport command is `flotilla volume-pipe`
// (PipeVolumeShare), so the mount outlives an agent restart and sshfs
// reconnects by itself. Every path is resolved inside the volume's
// directory through an os.Root: no name, "..", or symbolic link leads out.

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
)

// shareRoute reports whether r asks for a volume share, and for which.
func shareRoute(r *http.Request) (string, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, wire.StreamPathPrefix+"/volumes/")
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, "/share")
	return id, ok && id != "" && !strings.Contains(id, "/")
}

// shareAuthorized checks the share token of volume id.
func (s *StreamServer) shareAuthorized(r *http.Request, id string) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	want := wire.VolumeShareToken(string(s.token), id)
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1
}

// share serves volume {id}'s files in SFTP on the upgraded connection.
func (s *StreamServer) share(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	sharer, ok := s.drv.(driver.VolumeSharer)
	if !ok {
		return errdefs.New(errdefs.NotImplemented, "the %s driver keeps no volumes", s.drv.Name())
	}
	var size int64
	if q := r.URL.Query().Get("size"); q != "" {
		n, err := strconv.ParseInt(q, 10, 64)
		if err != nil || n < 0 {
			return errdefs.InvalidArgument("invalid size %q: give MiB", q)
		}
		size = n
	}
	dir, err := sharer.VolumeDir(r.Context(), id, size)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open volume %s", id)
	}
	defer root.Close()
	conn, in, err := s.upgrade(w, r)
	if err != nil || conn == nil {
		return err
	}
	defer s.release(conn)
	s.log.Info("volume share opened", "volume", id, "peer", conn.RemoteAddr().String())
	h := &shareFS{root: root, dir: dir}
	hs := sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}
	srv := sftp.NewRequestServer(readWriteCloser{in, conn}, hs)
	err = srv.Serve()
	srv.Close()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("volume share ended", "volume", id, "err", err)
	}
	return nil
}

type readWriteCloser struct {
	io.Reader
	c net.Conn
}

func (rw readWriteCloser) Write(b []byte) (int, error) { return rw.c.Write(b) }
func (rw readWriteCloser) Close() error                { return rw.c.Close() }

// shareFS answers SFTP requests inside one volume's directory.
type shareFS struct {
	root *os.Root
	dir  string
}

// rel turns the request's absolute, cleaned path into one relative to the root.
func rel(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		return "."
	}
	return p
}

func (h *shareFS) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	return h.root.Open(rel(r.Filepath))
}

func (h *shareFS) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	return h.open(r, os.O_WRONLY)
}

func (h *shareFS) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	return h.open(r, os.O_RDWR)
}

func (h *shareFS) open(r *sftp.Request, mode int) (*os.File, error) {
	f := r.Pflags()
	if f.Read && !f.Write {
		mode = os.O_RDONLY
	}
	if f.Creat {
		mode |= os.O_CREATE
	}
	if f.Trunc {
		mode |= os.O_TRUNC
	}
	if f.Excl {
		mode |= os.O_EXCL
	}
	return h.root.OpenFile(rel(r.Filepath), mode, openPerm(r.Attrs))
}

// openPerm reads the permissions of an open's attributes (their flags
// word, then size and owner when present), 0644 without them.
func openPerm(attrs []byte) os.FileMode {
	const size, owner, perms = 0x1, 0x2, 0x4
	if len(attrs) < 4 {
		return 0o644
	}
	fl, off := binary.BigEndian.Uint32(attrs), 4
	if fl&size != 0 {
		off += 8
	}
	if fl&owner != 0 {
		off += 8
	}
	if fl&perms == 0 || len(attrs) < off+4 {
		return 0o644
	}
	return modeOf(binary.BigEndian.Uint32(attrs[off:]))
}

// modeOf converts a POSIX mode's permission bits.
func modeOf(m uint32) os.FileMode {
	out := os.FileMode(m & 0o777)
	if m&syscall.S_ISUID != 0 {
		out |= os.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		out |= os.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		out |= os.ModeSticky
	}
	return out
}

func (h *shareFS) Filecmd(r *sftp.Request) error {
	p := rel(r.Filepath)
	switch r.Method {
	case "Setstat":
		return h.setstat(r, p)
	case "Rename":
		return h.root.Rename(p, rel(r.Target))
	case "Rmdir":
		if fi, err := h.root.Lstat(p); err != nil {
			return err
		} else if !fi.IsDir() {
			return syscall.ENOTDIR
		}
		return h.root.Remove(p)
	case "Remove":
		if fi, err := h.root.Lstat(p); err != nil {
			return err
		} else if fi.IsDir() {
			return syscall.EISDIR
		}
		return h.root.Remove(p)
	case "Mkdir":
		perm := os.FileMode(0o755)
		if r.AttrFlags().Permissions {
			perm = modeOf(r.Attributes().Mode)
		}
		return h.root.Mkdir(p, perm)
	case "Link":
		return h.root.Link(p, rel(r.Target))
	case "Symlink":
		// Filepath is the link's text, as given; Target is the new link.
		return h.root.Symlink(r.Filepath, rel(r.Target))
	}
	return sftp.ErrSSHFxOpUnsupported
}

func (h *shareFS) setstat(r *sftp.Request, p string) error {
	fl, a := r.AttrFlags(), r.Attributes()
	if fl.Size {
		f, err := h.root.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		err = f.Truncate(int64(a.Size))
		f.Close()
		if err != nil {
			return err
		}
	}
	if fl.Permissions {
		if err := h.root.Chmod(p, modeOf(a.Mode)); err != nil {
			return err
		}
	}
	if fl.UidGid {
		if err := h.root.Lchown(p, int(a.UID), int(a.GID)); err != nil {
			return err
		}
	}
	if fl.Acmodtime {
		if err := h.root.Chtimes(p, time.Unix(int64(a.Atime), 0), time.Unix(int64(a.Mtime), 0)); err != nil {
			return err
		}
	}
	return nil
}

func (h *shareFS) PosixRename(r *sftp.Request) error {
	return h.root.Rename(rel(r.Filepath), rel(r.Target))
}

func (h *shareFS) StatVFS(r *sftp.Request) (*sftp.StatVFS, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(h.dir, &st); err != nil {
		return nil, err
	}
	return &sftp.StatVFS{Bsize: uint64(st.Bsize), Frsize: uint64(st.Frsize), Blocks: st.Blocks, Bfree: st.Bfree,
		Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree, Favail: st.Ffree, Namemax: uint64(st.Namelen)}, nil
}

func (h *shareFS) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	p := rel(r.Filepath)
	switch r.Method {
	case "List":
		d, err := h.root.Open(p)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		list, err := d.Readdir(-1)
		if err != nil {
			return nil, err
		}
		return listerAt(list), nil
	case "Stat":
		fi, err := h.root.Stat(p)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

func (h *shareFS) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	fi, err := h.root.Lstat(rel(r.Filepath))
	if err != nil {
		return nil, err
	}
	return listerAt{fi}, nil
}

func (h *shareFS) Readlink(p string) (string, error) {
	return h.root.Readlink(rel(p))
}

func (h *shareFS) RealPath(p string) (string, error) {
	return path.Clean("/" + p), nil
}

type listerAt []fs.FileInfo

func (l listerAt) ListAt(out []fs.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[off:])
	if n < len(out) {
		return n, io.EOF
	}
	return n, nil
}

// PipeVolumeShare connects to a volume's share as the environment
// (driver.EnvShare*) describes and copies stdin to it and it to stdout
// until either ends: the transport sshfs runs in place of ssh.
func PipeVolumeShare(ctx context.Context, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	n := nodeclient.Node{ID: getenv(driver.EnvShareNode), Address: getenv(driver.EnvShareAddress), Token: getenv(driver.EnvShareToken)}
	id := getenv(driver.EnvShareVolume)
	if n.Address == "" || id == "" || n.Token == "" {
		return errors.New("volume-pipe is sshfs's transport to a volume's node; it needs " + driver.EnvShareAddress + ", " + driver.EnvShareVolume + " and " + driver.EnvShareToken)
	}
	size, _ := strconv.ParseInt(getenv(driver.EnvShareSize), 10, 64)
	c := nodeclient.New()
	defer c.Close()
	if ca := getenv(driver.EnvShareCA); ca != "" {
		roots, err := LoadRootCAs(ca)
		if err != nil {
			return err
		}
		c.UseTLS(roots)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := c.OpenVolumeShare(dctx, n, id, size)
	if err != nil {
		return fmt.Errorf("volume share %s on %s: %d %s", id, n.Address, errdefs.HTTPStatus(errdefs.CodeOf(err)), errdefs.MessageOf(err))
	}
	defer s.Close()
	done := make(chan error, 2)
	go func() {
		_, err := s.ReadFrom(stdin)
		s.CloseWrite()
		done <- err
	}()
	go func() {
		_, err := s.WriteTo(stdout)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
