package store

import (
	"context"

	"flotilla/api/errdefs"
)

// NodeStream is how the control plane reaches a node's stream server.
type NodeStream struct {
	NodeID  string `db:"id"`
	Address string `db:"address"`
	Token   string `db:"stream_token"`
}

// SetNodeStreamToken records the token a node's agent accepts on its stream
// server. It returns NotFound for an unknown node.
func (s *Store) SetNodeStreamToken(ctx context.Context, nodeID, token string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE nodes SET stream_token = $2 WHERE id::text = $1`, nodeID, token)
	if err != nil {
		return translate(err)
	}
	if tag.RowsAffected() == 0 {
		return errdefs.NotFoundf("node %s not found", nodeID)
	}
	return nil
}

const sqlNodeStream = `SELECT id::text, address, stream_token FROM nodes WHERE id::text = $1`

// NodeStream returns the stream address and token of a node. It returns
// NotFound for an unknown node; a node whose agent serves no streams has
// an empty Address.
func (s *Store) NodeStream(ctx context.Context, nodeID string) (NodeStream, error) {
	var n NodeStream
	if err := s.pool.QueryRow(ctx, sqlNodeStream, nodeID).Scan(&n.NodeID, &n.Address, &n.Token); err != nil {
		return NodeStream{}, notFound(err, "node "+nodeID+" not found")
	}
	return n, nil
}
