package nodeclient

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// StatPath describes path in an instance's filesystem. It returns NotFound
// for a missing path (or instance).
func (c *Client) StatPath(ctx context.Context, n Node, id, path string) (wire.PathStat, error) {
	var st wire.PathStat
	err := c.doJSON(ctx, n, http.MethodGet, instancePath(id, "archive", "stat"), url.Values{"path": {path}}, nil, &st)
	return st, err
}

// Archive opens a tar of path in an instance's filesystem, entries named
// after path's base name. The caller closes it; a read error means the
// archive was cut short.
func (c *Client) Archive(ctx context.Context, n Node, id, path string) (wire.PathStat, io.ReadCloser, error) {
	resp, err := c.do(ctx, n, http.MethodGet, instancePath(id, "archive"), url.Values{"path": {path}}, nil)
	if err != nil {
		return wire.PathStat{}, nil, err
	}
	var st wire.PathStat
	if err := json.Unmarshal([]byte(resp.Header.Get(wire.StreamPathStatHeader)), &st); err != nil {
		resp.Body.Close()
		return wire.PathStat{}, nil, errdefs.Wrap(errdefs.Unavailable, err, "bad path stat from the node")
	}
	return st, resp.Body, nil
}

// Extract unpacks the tar r into the directory dir of an instance's
// filesystem. It returns NotFound for a missing dir, Invalid for one that
// is not a directory or for an archive the node refuses.
func (c *Client) Extract(ctx context.Context, n Node, id, dir string, noOverwriteDirNonDir bool, r io.Reader) error {
	if err := n.check(); err != nil {
		return err
	}
	q := url.Values{"path": {dir}}
	if noOverwriteDirNonDir {
		q.Set("noOverwriteDirNonDir", "1")
	}
	return c.putTar(ctx, n, instancePath(id, "archive")+"?"+q.Encode(), r)
}

// putTar sends the tar r to node n with PUT pathQuery (a path with its
// query) and returns the node's error, if any.
func (c *Client) putTar(ctx context.Context, n Node, pathQuery string, r io.Reader) error {
	hc, scheme := c.httpFor(n)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, scheme+n.Address+pathQuery, io.NopCloser(r))
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "build request to node %s", n.Address)
	}
	req.Header.Set("Authorization", "Bearer "+n.Token)
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return errdefs.Wrap(errdefs.Unavailable, err, "request to the node cancelled")
		}
		return errdefs.Wrap(errdefs.Unavailable, err, "cannot reach the node's stream server at %s", n.Address)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	io.Copy(io.Discard, resp.Body)
	return nil
}
