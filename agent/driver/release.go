package driver

import "context"

// Releaser is implemented by drivers whose stopped instances hold things on
// the host outside their state directory (overlay mounts, network
// namespaces, veths, taps, cgroups). Release gives those back and keeps the
// instance on the node's disk, so that a later Start brings it back as it
// was. It returns Conflict for an instance that is still running and
// NotFound for an unknown id.
//
// A plain agent restart never calls it (running workloads are adopted);
// `flotilla dev` releases every instance when it stops, so that it leaves
// nothing of its own on the host.
type Releaser interface {
	Release(ctx context.Context, id string) error
}
