package driver

import (
	"context"
	"io"
)

// ChangeKind is how a path differs from the instance's image, numbered as
// Docker's container changes are.
type ChangeKind uint8

// The kinds of change, in Docker's numbering (`docker diff` prints C, A, D).
const (
	ChangeModify ChangeKind = 0
	ChangeAdd    ChangeKind = 1
	ChangeDelete ChangeKind = 2
)

// Change is one path of an instance's filesystem that differs from its
// image.
type Change struct {
	Path string // absolute, as the instance sees it
	Kind ChangeKind
}

// Differ is implemented by drivers that keep what an instance wrote apart
// from its image (an overlay's upper directory), so that the changes can be
// listed, and the whole filesystem or just the changes exported as tar.
// Methods return errdefs NotFound for an unknown instance and
// NotImplemented when the instance's filesystem keeps no such record.
// Nothing is read through a symlink, and only regular files' contents are
// read.
type Differ interface {
	// Changes lists the paths that differ from the image, sorted.
	Changes(ctx context.Context, id string) ([]Change, error)
	// ExportFilesystem writes the instance's whole filesystem to w as an
	// uncompressed tar (`docker export`), entries relative to its root.
	ExportFilesystem(ctx context.Context, id string, w io.Writer) error
	// ExportChanges writes the changes to w as an uncompressed OCI layer
	// tar: added and changed entries as they are, deletions as ".wh."
	// whiteouts, directories whose earlier content is hidden with an
	// opaque whiteout (".wh..wh..opq").
	ExportChanges(ctx context.Context, id string, w io.Writer) error
}
