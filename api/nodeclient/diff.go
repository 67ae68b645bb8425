package nodeclient

import (
	"context"
	"io"
	"net/http"

	"flotilla/api/agentapi/wire"
)

// Changes lists the paths of an instance's filesystem that differ from its
// image. It returns NotFound for an unknown instance and NotImplemented for
// one whose driver keeps no record of its changes.
func (c *Client) Changes(ctx context.Context, n Node, id string) ([]wire.Change, error) {
	var out []wire.Change
	err := c.doJSON(ctx, n, http.MethodGet, instancePath(id, "changes"), nil, nil, &out)
	return out, err
}

// Export opens a tar of an instance's whole filesystem; Layer opens its
// changes as an uncompressed OCI layer. The caller closes the reader; a
// read error means the tar was cut short. Errors are those of Changes.
func (c *Client) Export(ctx context.Context, n Node, id string) (io.ReadCloser, error) {
	return c.tar(ctx, n, id, "export")
}

func (c *Client) Layer(ctx context.Context, n Node, id string) (io.ReadCloser, error) {
	return c.tar(ctx, n, id, "layer")
}

func (c *Client) tar(ctx context.Context, n Node, id, what string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, n, http.MethodGet, instancePath(id, what), nil, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
