package driver

import (
	"context"
	"io"
	"os"
	"time"
)

// PathStat describes one path inside an instance's filesystem, as `docker
// cp` needs it. Mode carries the type bits of io/fs (os.ModeDir,
// os.ModeSymlink) as Docker's PathStat does.
type PathStat struct {
	Name       string      // the path's base name
	Size       int64       // in bytes
	Mode       os.FileMode // permission and type bits
	Mtime      time.Time   // last modification
	LinkTarget string      // for a symlink, where it points (as the container sees it)
}

// ArchiveOptions change how ExtractArchive writes.
type ArchiveOptions struct {
	// NoOverwriteDirNonDir refuses to replace a directory with something
	// that is not one, or the other way round (Docker's
	// noOverwriteDirNonDir).
	NoOverwriteDirNonDir bool
}

// Archiver is implemented by drivers that can copy files in and out of an
// instance's filesystem (`docker cp`). Paths are absolute paths as the
// instance sees them; symlinks are resolved as the instance would resolve
// them, never outside its filesystem. Methods return errdefs NotFound for
// an unknown instance or a missing path.
type Archiver interface {
	// StatPath describes path; a final symlink is not followed.
	StatPath(ctx context.Context, id, path string) (PathStat, error)
	// ArchivePath writes path (a file, or a directory and all it holds) to
	// w as an uncompressed tar whose entries are named after path's base
	// name, as `docker cp CONTAINER:path` expects.
	ArchivePath(ctx context.Context, id, path string, w io.Writer) error
	// ExtractArchive unpacks the uncompressed tar r into the existing
	// directory dir. It returns Invalid when dir is not a directory or the
	// tar is malformed or tries to write outside the filesystem.
	ExtractArchive(ctx context.Context, id, dir string, r io.Reader, opts ArchiveOptions) error
}
