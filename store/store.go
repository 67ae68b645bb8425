// Package store is Flotilla's only place with SQL: a Store over a pgx pool,
// one file per aggregate. Exported methods open their own transaction;
// unexported helpers take a querier so they compose.
//
// Tenancy: every method on tenant data takes the owner's id and puts it in the
// WHERE clause; another account's object is simply not found.
//
// Imports: pgx, golang-migrate, api/errdefs, scheduler (pure types), migrations.
// Never api/* handlers or agent.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla/api/errdefs"
)

// Store is the database.
type Store struct {
	pool *pgxpool.Pool
	url  string
}

// querier is what both a pool and a transaction offer.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Open connects to the database at url. It does not migrate.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "invalid database URL")
	}
	// Unless the URL says otherwise (pool_max_conns), allow enough
	// connections for concurrent creates and agent reports.
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = 48
	}
	cfg.MaxConnIdleTime = 5 * time.Minute
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the database: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to the database at %s: %w", redact(url), err)
	}
	return &Store{pool: pool, url: url}, nil
}

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Pool exposes the pool for LISTEN connections and tests.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// URL is the connection URL the store was opened with.
func (s *Store) URL() string { return s.url }

// inTx runs fn in a transaction, committing when it returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return translate(err)
	}
	defer tx.Rollback(ctx)
	if err := fn(tx); err != nil {
		return err
	}
	return translate(tx.Commit(ctx))
}

// SQLSTATE codes we classify.
const (
	sqlUniqueViolation     = "23505"
	sqlForeignKeyViolation = "23503"
	sqlCheckViolation      = "23514"
	sqlNotNullViolation    = "23502"
	sqlInvalidText         = "22P02"
	sqlSerialization       = "40001"
	sqlDeadlock            = "40P01"
)

// translate classifies a database error once, by SQLSTATE.
func translate(err error) error {
	if err == nil {
		return nil
	}
	var e *errdefs.Error
	if errors.As(err, &e) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return errdefs.Wrap(errdefs.NotFound, err, "not found")
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case sqlUniqueViolation:
			return errdefs.Wrap(errdefs.Conflict, err, "already exists")
		case sqlForeignKeyViolation:
			return errdefs.Wrap(errdefs.Conflict, err, "refers to something that does not exist or is in use")
		case sqlCheckViolation, sqlNotNullViolation, sqlInvalidText:
			return errdefs.Wrap(errdefs.Invalid, err, "invalid value")
		case sqlSerialization, sqlDeadlock:
			return errdefs.Wrap(errdefs.Conflict, err, "concurrent update, try again")
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return errdefs.Wrap(errdefs.Unavailable, err, "request cancelled or timed out")
	}
	return errdefs.Wrap(errdefs.Internal, err, "database error")
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// constraintOf returns the violated constraint's name, or "".
func constraintOf(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

// notFound returns err translated, with the not-found message replaced by msg.
func notFound(err error, msg string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return errdefs.Wrap(errdefs.NotFound, err, "%s", msg)
	}
	return translate(err)
}

func redact(url string) string {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return "(unparseable URL)"
	}
	return fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
}
