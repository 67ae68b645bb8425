package nodeclient

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"flotilla/api/agentapi/wire"
)

// Disk is an instance's disk as a node exports it for a migration.
type Disk struct {
	io.ReadCloser
	Layer string
	Size  int64 // -1 when the node did not say
}

// ExportDisk opens what an instance wrote to its disk on node n. The caller
// closes it; a read error means it was cut short. It returns NotFound for
// an instance not on the node, NotImplemented for a driver that cannot
// move instances.
func (c *Client) ExportDisk(ctx context.Context, n Node, id string) (Disk, error) {
	resp, err := c.do(ctx, n, http.MethodGet, instancePath(id, "migration", "disk"), nil, nil)
	if err != nil {
		return Disk{}, err
	}
	size, err := strconv.ParseInt(resp.Header.Get(wire.StreamDiskSizeHeader), 10, 64)
	if err != nil {
		size = -1
	}
	return Disk{ReadCloser: resp.Body, Layer: resp.Header.Get(wire.StreamDiskLayerHeader), Size: size}, nil
}

// StageDisk writes a disk of kind layer to node n for instance id, which a
// migration is about to move there.
func (c *Client) StageDisk(ctx context.Context, n Node, id, layer string, r io.Reader) error {
	if err := n.check(); err != nil {
		return err
	}
	return c.putTar(ctx, n, instancePath(id, "migration", "disk")+"?"+url.Values{"layer": {layer}}.Encode(), r)
}

// DropDisk removes a disk staged on node n for instance id, if any.
func (c *Client) DropDisk(ctx context.Context, n Node, id string) error {
	return c.doJSON(ctx, n, http.MethodDelete, instancePath(id, "migration", "disk"), nil, nil, nil)
}

// MigrationOp asks node n to carry out a migration's request on instance
// id: "release", "remove" or "discard" (api/agentapi/wire/streams.go).
func (c *Client) MigrationOp(ctx context.Context, n Node, id, op string) error {
	return c.doJSON(ctx, n, http.MethodPost, instancePath(id, "migration", op), nil, nil, nil)
}
