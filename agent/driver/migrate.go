package driver

import (
	"context"
	"io"
)

// Migrator is implemented by drivers whose instances can move to another
// node: what an instance wrote to its disk is exported on the node it
// leaves and imported, into the instance created afresh from the same spec,
// on the node it goes to. Methods return NotFound for an unknown instance.
type Migrator interface {
	// ExportDisk archives what the instance wrote to its filesystem, as
	// one moment of it (a running container is frozen while it is read).
	// The caller reads the archive and closes it.
	ExportDisk(ctx context.Context, id string) (DiskArchive, error)
	// ImportDisk replaces what the created, stopped instance wrote with
	// the archive r, which ExportDisk made with layer kind layer. A kind
	// this node cannot take is Invalid; a running instance Conflict.
	ImportDisk(ctx context.Context, id, layer string, r io.Reader) error
	// RemoveLocal removes the node's copy of an instance that moved away,
	// whose host resources were given back (Releaser) before it moved:
	// names of host resources (network namespaces, cgroups) are the
	// instance's, and on a host that runs more than one node they now
	// belong to the instance's new node. A running instance is Conflict;
	// an unknown one is a no-op.
	RemoveLocal(ctx context.Context, id string) error
}

// DiskArchive is an exported disk: a tar of what the instance wrote, with
// its kind (for runc "upper", an overlay upper directory, or "rootfs", a
// copied root filesystem). Close removes whatever the export kept.
type DiskArchive struct {
	io.ReadCloser
	Layer string
	Size  int64 // bytes, or -1 when not known in advance
}
