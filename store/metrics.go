package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

const sqlInstanceCountsByState = `
SELECT state, count(*) FROM instances WHERE state <> 'deleted' GROUP BY state`

// InstanceCountsByState counts the instances of every account that are not
// deleted, by observed state (for metrics; an operator's view).
func (s *Store) InstanceCountsByState(ctx context.Context) (map[string]int64, error) {
	rows, _ := s.pool.Query(ctx, sqlInstanceCountsByState)
	out := map[string]int64{}
	var state string
	var n int64
	_, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error {
		out[state] = n
		return nil
	})
	return out, translate(err)
}
