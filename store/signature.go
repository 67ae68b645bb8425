package store

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

const sqlBindSignature = `WITH ins AS (
	INSERT INTO signature_uses (signature_hash, request, conn, expires_at) VALUES ($1, $2, $3, $4)
	ON CONFLICT (signature_hash) DO NOTHING RETURNING request, conn)
SELECT request, conn FROM ins UNION ALL SELECT request, conn FROM signature_uses WHERE signature_hash = $1 LIMIT 1`

// BindSignature binds the signature identified by hash to request and the
// client connection conn until expires, unless it is bound already, and
// reports whether it is bound to that request or that connection (false: it
// was used first for another request on another connection). Bindings are
// shared by every replica through the database.
func (s *Store) BindSignature(ctx context.Context, hash []byte, request, conn string, expires time.Time) (bool, error) {
	if rand.N(256) == 0 {
		// Expired bindings protect nothing: their signatures no longer verify.
		if _, err := s.pool.Exec(ctx, `DELETE FROM signature_uses WHERE expires_at < now() - interval '1 minute'`); err != nil {
			return false, translate(err)
		}
	}
	for attempt := 0; ; attempt++ {
		var boundRequest, boundConn string
		err := s.pool.QueryRow(ctx, sqlBindSignature, hash, request, conn, expires).Scan(&boundRequest, &boundConn)
		if err == pgx.ErrNoRows && attempt == 0 {
			// A concurrent insert committed after this statement's snapshot.
			continue
		}
		if err != nil {
			return false, translate(err)
		}
		return boundRequest == request || boundConn == conn, nil
	}
}
