// Package migrations embeds Flotilla's PostgreSQL schema migrations
// (NNNNNN_name.up.sql / .down.sql, applied by golang-migrate through store.Migrate).
//
// Imports: standard library only.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
