package nodeclient

import (
	"context"
	"net/http"
	"net/url"

	"flotilla/api/agentapi/wire"
)

// RemoveVolume asks node n to remove the storage of deleted volume id. It
// returns Conflict when a container of the node still mounts it,
// NotImplemented for a driver that keeps no volumes; a volume the node
// does not have is not an error.
func (c *Client) RemoveVolume(ctx context.Context, n Node, id string) error {
	return c.doJSON(ctx, n, http.MethodDelete, wire.StreamPathPrefix+"/volumes/"+url.PathEscape(id), nil, nil, nil)
}
