package nodeclient

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"flotilla/api/agentapi/wire"
)

// RemoveVolume asks node n to remove the storage of deleted volume id. It
// returns Conflict when a container of the node still mounts it,
// NotImplemented for a driver that keeps no volumes; a volume the node
// does not have is not an error.
func (c *Client) RemoveVolume(ctx context.Context, n Node, id string) error {
	return c.doJSON(ctx, n, http.MethodDelete, wire.StreamPathPrefix+"/volumes/"+url.PathEscape(id), nil, nil, nil)
}

// OpenVolumeShare upgrades to the SFTP share of volume id (of sizeMiB) on
// node n, whose Token must be the volume's share token
// (wire.VolumeShareToken), not the node's stream token.
func (c *Client) OpenVolumeShare(ctx context.Context, n Node, id string, sizeMiB int64) (*Stream, error) {
	q := url.Values{}
	if sizeMiB > 0 {
		q.Set("size", strconv.FormatInt(sizeMiB, 10))
	}
	return c.upgrade(ctx, n, strings.Replace(wire.VolumeSharePath, "{id}", url.PathEscape(id), 1), q)
}
